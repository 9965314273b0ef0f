//! Kernel versions: what a hook needs, what the running kernel is, and what
//! the tests expect of each.

use std::fmt;

/// A kernel's major and minor version, ordered as releases are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

impl KernelVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// The version of a release such as `6.18.44-fc-v595` or `5.14`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut numbers = release.trim().split(['.', '-']);
        let major = numbers.next()?.parse().ok()?;
        let minor = numbers.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// The running kernel's version; `None` if its release cannot be read
    /// or understood.
    pub fn running() -> Option<Self> {
        Self::parse(&release()?)
    }
}

/// The running kernel's release (`uname -r`), if it can be read.
pub fn release() -> Option<String> {
    std::fs::read_to_string(OSRELEASE)
        .ok()
        .map(|release| release.trim().to_owned())
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v595"),
            Some(KernelVersion::new(6, 18))
        );
        assert_eq!(
            KernelVersion::parse("5.14.0-362.el9.x86_64"),
            Some(KernelVersion::new(5, 14))
        );
        assert_eq!(
            KernelVersion::parse("6.10"),
            Some(KernelVersion::new(6, 10))
        );
        assert_eq!(KernelVersion::parse("6-rc1"), None);
        assert_eq!(KernelVersion::parse(""), None);
        assert!(KernelVersion::new(5, 10) < KernelVersion::new(5, 12));
        assert!(KernelVersion::new(6, 1) > KernelVersion::new(5, 12));
        assert_eq!(KernelVersion::new(6, 10).to_string(), "6.10");
    }
}
