//! Reading the files the command line names (`--config`, `--web.config.file`
//! and the files it names, `--btf`): regular files only, up to a stated
//! size, so that `/dev/zero`, a FIFO or a huge file is refused at once
//! instead of filling memory or blocking start-up.

use std::{
    fs::{File, Metadata},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// Largest configuration file (`--config`, `--web.config.file`, and the
/// certificate and key it names): real ones are a few KiB.
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// Largest BTF file: the kernel's own is 5–10 MiB on distribution kernels;
/// this leaves room for much larger ones and stays far below what parsing
/// it may cost in a 512 MiB container.
pub const BTF_MAX_BYTES: u64 = 128 << 20;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read it: no such file")]
    NotFound,
    #[error("is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("is larger than the {} accepted", size(*.limit))]
    TooLarge { limit: u64 },
    #[error("cannot read it: {0}")]
    Io(#[source] io::Error),
}

impl ReadError {
    /// Whether the file itself is unsuitable (a usage error), rather than
    /// missing or unreadable.
    pub fn is_unsuitable(&self) -> bool {
        matches!(self, Self::NotRegular { .. } | Self::TooLarge { .. })
    }
}

/// Reads all of `path` if it is a regular file of at most `limit` bytes.
///
/// The type is checked before opening (a FIFO would block the open) and
/// again on the opened file; the size is checked from its metadata and
/// again while reading, since files in /sys and /proc may report a size
/// other than what they hold.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io_error = |error: io::Error| match error.kind() {
        io::ErrorKind::NotFound => ReadError::NotFound,
        _ => ReadError::Io(error),
    };
    check(&std::fs::metadata(path).map_err(io_error)?, limit)?;
    // Non-blocking, so that a FIFO swapped in after the check cannot block
    // the open; O_NOCTTY so that a terminal cannot become ours.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    check(&metadata, limit)?;
    let capacity = usize::try_from(metadata.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// [`read_bounded`] for text (UTF-8).
pub fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|_| {
        ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is not UTF-8 text",
        ))
    })
}

fn check(metadata: &Metadata, limit: u64) -> Result<(), ReadError> {
    let kind = metadata.file_type();
    let not = |kind| Err(ReadError::NotRegular { kind });
    if kind.is_dir() {
        return not("a directory");
    }
    if kind.is_fifo() {
        return not("a FIFO");
    }
    if kind.is_char_device() {
        return not("a character device");
    }
    if kind.is_block_device() {
        return not("a block device");
    }
    if kind.is_socket() {
        return not("a socket");
    }
    if !kind.is_file() {
        return not("a special file");
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(())
}

/// `1 MiB`, `128 MiB`, `512 KiB`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn regular_files_up_to_the_limit() {
        let dir = scratch("regular");
        let path = dir.join("ok");
        std::fs::write(&path, b"12345").expect("write");
        assert_eq!(read_bounded(&path, 5).expect("read"), b"12345");
        let error = read_bounded(&path, 4).expect_err("too large");
        assert_eq!(error.to_string(), "is larger than the 4 bytes accepted");
        assert!(error.is_unsuitable());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn everything_else_is_refused_by_its_kind() {
        let dir = scratch("kinds");
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        for (path, message) in [
            (
                Path::new("/dev/zero"),
                "is a character device, not a regular file",
            ),
            (fifo.as_path(), "is a FIFO, not a regular file"),
            (dir.as_path(), "is a directory, not a regular file"),
        ] {
            let error = read_bounded(path, CONFIG_MAX_BYTES).expect_err("refused");
            assert_eq!(error.to_string(), message, "{}", path.display());
        }
        assert!(matches!(
            read_bounded(&dir.join("missing"), 1),
            Err(ReadError::NotFound)
        ));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// Files in /proc report a size of 0: what they hold still counts.
    #[test]
    fn the_size_read_counts_not_the_size_reported() {
        let path = Path::new("/proc/self/status");
        assert_eq!(std::fs::metadata(path).expect("stat").len(), 0);
        assert!(
            !read_bounded(path, CONFIG_MAX_BYTES)
                .expect("read")
                .is_empty()
        );
        assert!(matches!(
            read_bounded(path, 16),
            Err(ReadError::TooLarge { limit: 16 })
        ));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(CONFIG_MAX_BYTES), "1 MiB");
        assert_eq!(size(BTF_MAX_BYTES), "128 MiB");
        assert_eq!(size(16 << 10), "16 KiB");
    }
}
