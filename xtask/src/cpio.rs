//! A writer for the cpio "newc" format, the one the kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! The test VM's initramfs holds a handful of files, so it is built in
//! memory, with no `cpio` tool needed on the host.

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

#[derive(Debug, Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Archive {
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, (0, 0), data);
    }

    /// A character device node, e.g. `/dev/console` (5, 1).
    pub fn char_device(&mut self, path: &str, mode: u32, (major, minor): (u32, u32)) {
        self.entry(path, S_IFCHR | mode, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, (rdev_major, rdev_minor): (u32, u32), data: &[u8]) {
        self.next_inode += 1;
        let name = path.trim_start_matches('/');
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let size = u32::try_from(data.len()).expect("initramfs members are small");
        let name_size = u32::try_from(name.len() + 1).expect("short names");
        // magic, then ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check: 8 hex digits each.
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev_major,
            rdev_minor,
            name_size,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Archive;

    #[test]
    fn entries_are_aligned_and_end_with_the_trailer() {
        let mut archive = Archive::default();
        archive.dir("/bin");
        archive.file("/init", 0o755, b"#!/bin/sh\n");
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);
        // First header: magic, inode 1, a directory with mode 0755.
        assert_eq!(&bytes[..22], b"07070100000001000041ed");
        // Its name follows the 110-byte header, NUL-terminated.
        assert_eq!(&bytes[110..114], b"bin\0");
        let init = bytes
            .windows(5)
            .position(|w| w == b"init\0")
            .expect("init's name");
        let header = init - 110;
        assert_eq!(&bytes[header + 14..header + 22], b"000081ed");
        // filesize field: 10 bytes of data.
        assert_eq!(&bytes[header + 54..header + 62], b"0000000a");
        let data = (init + 5).next_multiple_of(4);
        assert_eq!(&bytes[data..data + 10], b"#!/bin/sh\n");
        let trailer = bytes
            .windows(11)
            .position(|w| w == b"TRAILER!!!\0")
            .expect("trailer");
        assert_eq!((trailer - 110) % 4, 0);
    }
}
