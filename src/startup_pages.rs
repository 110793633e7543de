//! Once the broker is ready, unmaps the executable's read-only pages that start-up faulted in
//! (part of the `sts-broker` binary, not the library: the library forbids `unsafe`).
//!
//! Start-up (CLI, config, the AWS SDK's set-up, the first STS calls) runs code spread over the
//! whole executable, and the kernel maps 64 KiB around every page it faults in: once ready,
//! ~90 % of the binary's code is mapped and counted in its RSS, while idle serving uses ~1.7 MB
//! of it (BENCHMARKS.md, "Sidecar footprint"). `MADV_DONTNEED` on the segments that are not
//! writable drops those mappings; the pages stay in the page cache (clean, shared with every
//! broker started from the same file) and whatever runs next faults back in what it needs.
//! Only segments loaded without write permission are touched: they hold no private copy
//! (the relocated data, RELRO, sits in a writable segment), so nothing is lost.

use std::time::Duration;

use sts_broker::Broker;

/// How often readiness is checked; the release is not urgent.
const POLL: Duration = Duration::from_millis(200);

/// Waits until every prefetched role is servable (what `/readyz` and `READY=1` report), then
/// releases the start-up pages once.
pub async fn release_when_ready(broker: &Broker) {
    while !broker.unready_roles().await.is_empty() {
        tokio::time::sleep(POLL).await;
    }
    release();
}

/// `MADV_DONTNEED` on every read-only, page-aligned span of the executable's loaded segments.
pub fn release() {
    for (start, len) in read_only_segments() {
        // SAFETY: the span lies inside a PT_LOAD segment of this executable mapped without
        // write permission (rounded inwards to whole pages, so no writable page is included):
        // its pages are unmodified file pages, and dropping them only means the next access
        // faults them back in from the page cache.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    }
}

/// (start, length) of each non-writable PT_LOAD segment of the executable, rounded inwards to
/// whole pages.
fn read_only_segments() -> Vec<(usize, usize)> {
    unsafe extern "C" fn first_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid dl_phdr_info whose dlpi_phdr points at
        // dlpi_phnum program headers, and `data` is the Vec handed to it below.
        unsafe {
            let out = &mut *data.cast::<Vec<(usize, usize)>>();
            let info = &*info;
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            for i in 0..usize::from(info.dlpi_phnum) {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 {
                    continue;
                }
                let begin = info.dlpi_addr as usize + ph.p_vaddr as usize;
                let start = begin.next_multiple_of(page);
                let end = (begin + ph.p_memsz as usize) / page * page;
                if end > start {
                    out.push((start, end - start));
                }
            }
        }
        // The first object is the executable itself: stop there.
        1
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    // SAFETY: the callback only reads what dl_iterate_phdr hands it and writes to `out`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first_object), (&raw mut out).cast()) };
    out
}

#[cfg(test)]
mod tests {
    /// The spans are whole pages of this executable that /proc/self/maps shows without write
    /// permission, code among them, and the process runs on once they are released.
    #[test]
    fn only_read_only_pages_of_the_executable_are_released() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mappings: Vec<(usize, usize, &str, &str)> = maps
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (a, b) = f[0].split_once('-').unwrap();
                let path = f.get(5).copied().unwrap_or("");
                let a = usize::from_str_radix(a, 16).unwrap();
                (a, usize::from_str_radix(b, 16).unwrap(), f[1], path)
            })
            .collect();
        let segments = super::read_only_segments();
        assert!(!segments.is_empty());
        let mut code = false;
        for &(start, len) in &segments {
            assert_eq!(start % 4096, 0);
            assert_eq!(len % 4096, 0);
            for page in (start..start + len).step_by(4096) {
                let &(_, _, perms, path) = mappings
                    .iter()
                    .find(|(a, b, _, _)| (*a..*b).contains(&page))
                    .unwrap_or_else(|| panic!("{page:#x} is not mapped"));
                assert_eq!(std::path::Path::new(path), exe, "{page:#x}");
                assert!(!perms.contains('w'), "{page:#x} is writable: {perms}");
                code |= perms.contains('x');
            }
        }
        assert!(code, "no executable span in {segments:x?}");
        let before = resident_kib(&exe);
        super::release();
        let after = resident_kib(&exe);
        // The release really drops mappings (other test threads fault a few pages back in),
        // and the process runs on: the code it needs faults back from the page cache.
        assert!(after < before, "resident {before} KiB -> {after} KiB");
        assert_eq!(format!("{}", 40 + 2), "42");
        assert_eq!(super::read_only_segments(), segments);
    }

    /// KiB of `exe`'s non-writable mappings resident now (/proc/self/smaps).
    fn resident_kib(exe: &std::path::Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut counting = false;
        let mut total = 0;
        for line in smaps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first()
                .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
            {
                counting = f.len() >= 6 && !f[1].contains('w') && std::path::Path::new(f[5]) == exe;
            } else if counting && f.first() == Some(&"Rss:") {
                total += f[1].parse::<u64>().unwrap();
            }
        }
        total
    }
}
