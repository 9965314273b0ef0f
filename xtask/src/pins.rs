//! The pinned build tools, read from `toolchain.env` at the workspace root.

use std::{fs, path::Path};

#[derive(Debug)]
pub struct Pins {
    /// Toolchain for the userspace crates, e.g. `1.98.0`.
    pub rust_host: String,
    /// Nightly toolchain for the BPF crate, e.g. `nightly-2026-07-01`.
    pub rust_bpf: String,
    /// LLVM major version shared by that nightly and bpf-linker.
    pub llvm_major: String,
    /// bpf-linker crate version.
    pub bpf_linker: String,
}

impl Pins {
    pub fn load(root: &Path) -> Result<Self, String> {
        let path = root.join("toolchain.env");
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let get = |key: &str| {
            lookup(&text, key).ok_or_else(|| format!("{} has no {key}=… line", path.display()))
        };
        Ok(Self {
            rust_host: get("RUST_HOST")?,
            rust_bpf: get("RUST_BPF")?,
            llvm_major: get("LLVM_MAJOR")?,
            bpf_linker: get("BPF_LINKER")?,
        })
    }

    pub fn llvm_prefix(&self) -> String {
        format!("/usr/lib/llvm-{}", self.llvm_major)
    }
}

/// Value of `KEY=value` in a shell-style env file (comments and blanks ignored).
pub fn lookup(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn lookup_skips_comments_and_prefixes() {
        let text = "# RUST_BPF=wrong\nRUST_BPF_X=no\n RUST_BPF = no\nRUST_BPF=nightly-2026-07-01\n";
        assert_eq!(
            lookup(text, "RUST_BPF").as_deref(),
            Some("nightly-2026-07-01")
        );
        assert_eq!(lookup(text, "LLVM_MAJOR"), None);
    }
}
