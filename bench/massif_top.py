#!/usr/bin/env python3
"""Summarises a massif.out: the heap at its peak snapshot, grouped by the first frame (from the
allocation upward) that names one of the interesting crates, so per-subsystem bytes stand out.

    python3 bench/massif_top.py massif.out [N] [peak|last|first-over=MIB]

`last`: the last detailed snapshot instead; `first-over=100`: the first detailed snapshot whose
heap exceeds 100 MiB (how a peak was reached).
"""

import re
import sys

INTERESTING = re.compile(
    r"(sts_broker::[\w:]+|moka::[\w:]+|prometheus::[\w:]+|aws_[\w:]+|hyper[\w:]*::[\w:]+|"
    r"tokio::runtime::[\w:]+|tracing_subscriber::[\w:]+|toml::[\w:]+|serde_json::[\w:]+|"
    r"crossbeam[\w:]*::[\w:]+|std::thread::[\w:]+)"
)


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    which = sys.argv[3] if len(sys.argv) > 3 else "peak"
    lines = open(path).read().split("\n")
    if which == "peak":
        i = next(n for n, l in enumerate(lines) if l == "heap_tree=peak")
    elif which.startswith("first-over="):
        limit = float(which.split("=")[1]) * 1048576
        i = next(n for n, l in enumerate(lines) if l in ("heap_tree=detailed", "heap_tree=peak")
                 and int(lines[n - 3].split("=")[1]) > limit)
    else:
        i = max(n for n, l in enumerate(lines) if l in ("heap_tree=detailed", "heap_tree=peak"))
    heap = next(int(l.split("=")[1]) for l in lines[i - 6:i] if l.startswith("mem_heap_B="))
    extra = next(int(l.split("=")[1]) for l in lines[i - 6:i] if l.startswith("mem_heap_extra_B="))
    groups = {}
    stack = []  # (indent, desc)
    n = i + 1
    while n < len(lines) and not lines[n].startswith("#-----------"):
        l = lines[n]
        n += 1
        m = re.match(r"^( *)n(\d+): (\d+) (.*)$", l)
        if not m:
            continue
        indent, kids, size, desc = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        stack = [s for s in stack if s[0] < indent]
        stack.append((indent, desc))
        if kids == 0 and indent > 0:
            # A leaf: attribute to the deepest-from-allocation interesting frame.
            label = None
            for _, d in stack[1:]:  # from the allocation towards main
                mm = INTERESTING.search(d)
                if mm:
                    label = mm.group(1)
                    break
            label = label or (stack[1][1][:90] if len(stack) > 1 else desc[:90])
            groups[label] = groups.get(label, 0) + size
    print(f"{which} snapshot: heap {heap / 1048576:.2f} MiB useful + {extra / 1048576:.2f} MiB allocator overhead")
    for label, size in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{size / 1048576:8.2f} MiB  {100 * size / heap:5.1f} %  {label}")


if __name__ == "__main__":
    main()
