//! The kernels the test VM boots: Debian 12's own, fetched from the Debian
//! archive into a cache under `target/`, or any bzImage given by path.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{cmd, setup::step};

/// A kernel from Debian 12's archive: its name for `--kernel`, the package
/// that always depends on its newest build, and that build's name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebianKernel {
    pub name: &'static str,
    meta: &'static str,
    prefix: &'static str,
}

/// Debian 12's own kernel (6.1 LTS), and the 6.12 LTS it also ships.
pub const DEBIAN_KERNELS: &[DebianKernel] = &[
    DebianKernel {
        name: "debian-6.1",
        meta: "linux-image-amd64",
        prefix: "linux-image-6.1.",
    },
    DebianKernel {
        name: "debian-6.12",
        meta: "linux-image-6.12-amd64",
        prefix: "linux-image-6.12.",
    },
];

/// What `--kernel` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// The running kernel, tested without a VM.
    Host,
    Debian(DebianKernel),
    /// A bzImage on disk.
    Path(PathBuf),
}

impl KernelSpec {
    pub fn parse(text: &str) -> Self {
        if text == "host" {
            return Self::Host;
        }
        match DEBIAN_KERNELS.iter().find(|k| k.name == text) {
            Some(kernel) => Self::Debian(*kernel),
            None => Self::Path(PathBuf::from(text)),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Host => "host".to_owned(),
            Self::Debian(kernel) => kernel.name.to_owned(),
            Self::Path(path) => path.display().to_string(),
        }
    }
}

/// A kernel ready to boot.
#[derive(Debug)]
pub struct Kernel {
    /// How it was asked for, for every line that names it.
    pub name: String,
    pub image: PathBuf,
    /// `uname -r` of that kernel, read from the image.
    pub release: String,
    /// `lib/modules/<release>` beside it, if there is one.
    pub modules: Option<PathBuf>,
}

/// Finds or fetches the kernel `spec` names (not [`KernelSpec::Host`]).
pub fn prepare(spec: &KernelSpec, cache: &Path) -> Result<Kernel, String> {
    let image = match spec {
        KernelSpec::Host => return Err("the host kernel needs no VM".to_owned()),
        KernelSpec::Debian(kernel) => debian(kernel, &cache.join(kernel.name))?,
        KernelSpec::Path(path) => path.clone(),
    };
    let bytes = fs::read(&image).map_err(|e| format!("kernel image {}: {e}", image.display()))?;
    let release = image_release(&bytes).ok_or_else(|| {
        format!(
            "{} is not a bzImage (no kernel version in its boot header)",
            image.display()
        )
    })?;
    // A package's layout (boot/vmlinuz-R beside lib/modules/R), else the
    // host's own modules directory.
    let beside = image
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("lib/modules").join(&release));
    let modules = beside
        .into_iter()
        .chain([Path::new("/lib/modules").join(&release)])
        .find(|dir| dir.is_dir());
    Ok(Kernel {
        name: spec.name(),
        image,
        release,
        modules,
    })
}

/// A kernel package from Debian's archive, downloaded and unpacked once into
/// `cache`; returns the path of its vmlinuz.
fn debian(kernel: &DebianKernel, cache: &Path) -> Result<PathBuf, String> {
    let package = debian_kernel_package(kernel)?;
    let dir = cache.join(&package);
    let what = format!("kernel {package}");
    if let Some(image) = vmlinuz_in(&dir) {
        step(&what, "present");
        return Ok(image);
    }
    step(&what, "downloading (about 70 MB)");
    let unpacked = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&unpacked);
    let deb = apt_download(&package, cache)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let _ = fs::remove_file(&deb);
    // Renamed only once complete, so an interrupted unpack is redone.
    fs::rename(&unpacked, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    vmlinuz_in(&dir).ok_or_else(|| format!("{package} has no boot/vmlinuz-*"))
}

/// The versioned package `kernel.meta` depends on, e.g. on Debian 12
/// `linux-image-amd64` -> `linux-image-6.1.0-<abi>-amd64`.
fn debian_kernel_package(kernel: &DebianKernel) -> Result<String, String> {
    let depends = || {
        let listed = cmd::output(Command::new("apt-cache").args(["depends", kernel.meta]))?;
        listed.lines().find_map(|line| {
            let name = line.trim().strip_prefix("Depends: ")?;
            name.starts_with("linux-image-").then(|| name.to_owned())
        })
    };
    let package = if let Some(package) = depends() {
        package
    } else {
        apt_update()?;
        depends().ok_or_else(|| {
            format!(
                "apt-cache knows no {}: {} needs Debian 12's package lists",
                kernel.meta, kernel.name
            )
        })?
    };
    if !package.starts_with(kernel.prefix) {
        return Err(format!(
            "{} depends on {package} here, not {}*: {} needs Debian 12's package lists (or pass the kernel's path to --kernel)",
            kernel.meta, kernel.prefix, kernel.name
        ));
    }
    Ok(package)
}

/// Downloads the package's .deb into `dir`; returns its path.
pub fn apt_download(package: &str, dir: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let download = || {
        cmd::run(
            Command::new("apt-get")
                .current_dir(dir)
                // As root into a directory the _apt user may not write to.
                .args(["-qq", "-o", "APT::Sandbox::User=root", "download", package]),
        )
    };
    // Package lists older than the archive name files it no longer has.
    if download().is_err() {
        apt_update()?;
        download()?;
    }
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let named = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix));
            named && path.extension().is_some_and(|ext| ext == "deb")
        })
        .ok_or_else(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                dir.display()
            )
        })
}

fn apt_update() -> Result<(), String> {
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn vmlinuz_in(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
}

/// The kernel release a bzImage was built as: its boot header points at a
/// version string such as `6.1.0-56-amd64 (debian-kernel@…) #1 SMP …`
/// (`Documentation/arch/x86/boot.rst`: `kernel_version` at 0x20e).
pub fn image_release(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let pointer = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]);
    let start = 0x200 + usize::from(pointer);
    let text = image.get(start..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// The module files to load, in an order that loads each one's
/// dependencies first, for the modules `wanted` that exist in `dir`.
/// Modules not found there are built in, or missing: the guest tells.
pub fn module_load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, String> {
    let mut files = BTreeMap::new();
    collect_modules(&dir.join("kernel"), &mut files)?;
    let mut order = Vec::new();
    for name in wanted {
        visit(name, &files, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<(), String> {
    let Some(path) = files.get(&name.replace('-', "_")) else {
        return Ok(());
    };
    if order.contains(path) {
        return Ok(());
    }
    if depth > 32 {
        return Err(format!("module dependencies loop through {name}"));
    }
    for dependency in module_depends(&module_bytes(path)?) {
        visit(&dependency, files, order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

/// How modules may be compressed (`CONFIG_MODULE_COMPRESS_*`), and the
/// command that decompresses each to stdout.
const COMPRESSIONS: &[(&str, &str)] = &[
    (".ko", ""),
    (".ko.xz", "xz"),
    (".ko.gz", "gzip"),
    (".ko.zst", "zstd"),
];

/// Every module file under `dir`, by module name (`-` written `_`, as the
/// kernel does).
fn collect_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = path.file_name().and_then(|name| name.to_str());
        if path.is_dir() {
            collect_modules(&path, files)?;
        } else if let Some(stem) = name.and_then(|name| {
            COMPRESSIONS
                .iter()
                .find_map(|(suffix, _)| name.strip_suffix(suffix))
        }) {
            files.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// A module's contents, decompressed: the guest's busybox `insmod` takes
/// plain ELF only.
pub fn module_bytes(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.to_string_lossy();
    let tool = COMPRESSIONS
        .iter()
        .find(|(suffix, _)| name.ends_with(suffix))
        .map_or("", |(_, tool)| *tool);
    if tool.is_empty() {
        return fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    }
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {tool} to decompress {}: {e}", path.display()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The `depends=` entry of a module's `.modinfo` section: the modules it
/// needs loaded first, comma-separated.
pub fn module_depends(module: &[u8]) -> Vec<String> {
    module
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_comes_from_the_boot_header() {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let version = b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        image[0x300..0x300 + version.len()].copy_from_slice(version);
        assert_eq!(image_release(&image).as_deref(), Some("6.1.0-56-amd64"));
        image[0x202] = b'X';
        assert_eq!(image_release(&image), None);
        assert_eq!(image_release(&[0; 16]), None);
    }

    #[test]
    fn dependencies_come_from_modinfo() {
        let module = b"\x7fELF...\0license=GPL\0depends=9pnet,fscache,netfs\0intree=Y\0";
        assert_eq!(module_depends(module), ["9pnet", "fscache", "netfs"]);
        assert!(module_depends(b"\0depends=\0name=9pnet\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }
}
