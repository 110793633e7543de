//! Reading the files the config names (the config itself, token files, secrets re-read on
//! every refresh) without trusting them: regular files only, opened without blocking, read
//! with a size cap. A FIFO at a token path must not wedge the loop that also handles
//! SIGTERM, and a symlink to `/dev/zero` must not grow memory without bound.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Cap on the config file (10,000 roles take about 2 MB).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// Cap on a token or secret file (a SAML assertion may be 100,000 characters).
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Opens `path` for reading without blocking (`O_NONBLOCK`: opening a FIFO with no writer
/// returns at once) and refuses anything but a regular file (after following symlinks).
///
/// # Errors
/// When it cannot be opened or is a FIFO, device, socket or directory.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", describe(kind)),
        ));
    }
    Ok(file)
}

/// Reads a regular file of at most `cap` bytes as UTF-8.
///
/// # Errors
/// What [`open_regular`] refuses, a read error, more than `cap` bytes, or invalid UTF-8.
pub fn read_bounded(path: &Path, cap: u64) -> std::io::Result<String> {
    let file = open_regular(path)?;
    let mut text = String::new();
    file.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes"),
        ));
    }
    Ok(text)
}

/// [`read_bounded`] on the blocking pool, for async callers.
///
/// # Errors
/// As [`read_bounded`].
pub async fn read_bounded_async(path: &Path, cap: u64) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_bounded(&path, cap))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_oversized_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = read_bounded(&fifo, 100).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_bounded(&zero, 100).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(101)).unwrap();
        let e = read_bounded(&big, 100).unwrap_err();
        assert!(e.to_string().contains("larger than 100 bytes"), "{e}");
        std::fs::write(&big, "x".repeat(100)).unwrap();
        assert_eq!(read_bounded(&big, 100).unwrap().len(), 100);
    }
}
