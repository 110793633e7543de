# Sourced by scripts/build-image.sh and scripts/check-image.sh: `pm` is podman with the flags
# that work on a Debian 12 CI machine run as root without systemd:
#   vfs storage (no overlay module or fuse-overlayfs needed), runc (crun refuses the hybrid cgroup
#   layout), cgroupfs (no systemd to delegate cgroups), file events (no journald).
# PODMAN_ROOT moves podman's storage (default: podman's own, /var/lib/containers/storage).
pm() {
  podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs --events-backend file \
    ${PODMAN_ROOT:+--root "$PODMAN_ROOT/storage" --runroot "$PODMAN_ROOT/run"} "$@"
}
