//! An OCI image archive (image-spec 1.1 layout, tarred) built from
//! scratch: one layer holding the static binary as
//! `/usr/local/bin/tcptrace`, and nothing else. `podman load`,
//! `docker load` and `skopeo copy oci-archive:…` read it.
//!
//! Written by hand: the layout is four small JSON documents around a tar
//! file, and no builder (buildah, docker) is needed on the machine.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{cmd, dist};

pub const BINARY_IN_IMAGE: &str = "usr/local/bin/tcptrace";

pub struct Image<'a> {
    pub binary: &'a Path,
    /// `amd64`, `arm64`.
    pub arch: &'a str,
    pub version: &'a str,
    /// `name:tag`, as the archive's index names it.
    pub name: &'a str,
    /// The commit built, when known.
    pub revision: Option<&'a str>,
    /// Seconds since the epoch: the layer's file times and `created`.
    pub epoch: u64,
    /// A scratch directory, replaced.
    pub work: &'a Path,
    pub archive: &'a Path,
}

pub fn write_archive(image: &Image<'_>) -> Result<(), String> {
    let work = image.work;
    if work.exists() {
        fs::remove_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    dist::mkdir(&blobs)?;
    let in_image = rootfs.join(BINARY_IN_IMAGE);
    dist::mkdir(in_image.parent().unwrap_or(&rootfs))?;
    fs::copy(image.binary, &in_image).map_err(|e| format!("{}: {e}", image.binary.display()))?;

    let layer_tar = work.join("layer.tar");
    cmd::run(
        dist::reproducible_tar(image.epoch)
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg("usr"),
    )?;
    let diff_id = sha256(&layer_tar)?;
    let layer_gz = work.join("layer.tar.gz");
    dist::gzip(&layer_tar, &layer_gz)?;
    let layer = blob(&blobs, &layer_gz)?;

    let created = rfc3339(image.epoch)?;
    let labels = labels(image, &created);
    let config = format!(
        concat!(
            "{{\"created\":{created},\"architecture\":{arch},\"os\":\"linux\",",
            "\"config\":{{\"Entrypoint\":[\"/{binary}\"],\"Cmd\":[\"run\"],",
            "\"ExposedPorts\":{{\"10091/tcp\":{{}}}},\"Labels\":{labels}}},",
            "\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{diff_id}\"]}},",
            "\"history\":[{{\"created\":{created},\"created_by\":\"cargo xtask dist\"}}]}}"
        ),
        created = json(&created),
        arch = json(image.arch),
        binary = BINARY_IN_IMAGE,
        labels = labels,
        diff_id = diff_id,
    );
    let config_path = work.join("config.json");
    write(&config_path, &config)?;
    let config = blob(&blobs, &config_path)?;

    let manifest = format!(
        concat!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",",
            "\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",",
            "\"digest\":\"sha256:{config}\",\"size\":{config_size}}},",
            "\"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",",
            "\"digest\":\"sha256:{layer}\",\"size\":{layer_size}}}],",
            "\"annotations\":{labels}}}"
        ),
        config = config.digest,
        config_size = config.size,
        layer = layer.digest,
        layer_size = layer.size,
        labels = labels,
    );
    let manifest_path = work.join("manifest.json");
    write(&manifest_path, &manifest)?;
    let manifest = blob(&blobs, &manifest_path)?;

    let index = format!(
        concat!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",",
            "\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",",
            "\"digest\":\"sha256:{digest}\",\"size\":{size},",
            "\"platform\":{{\"architecture\":{arch},\"os\":\"linux\"}},",
            "\"annotations\":{{\"org.opencontainers.image.ref.name\":{name}}}}}]}}"
        ),
        digest = manifest.digest,
        size = manifest.size,
        arch = json(image.arch),
        name = json(image.name),
    );
    write(&layout.join("index.json"), &index)?;
    write(
        &layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )?;
    cmd::run(
        dist::reproducible_tar(image.epoch)
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(image.archive)
            .args(["oci-layout", "index.json", "blobs"]),
    )
}

/// The pre-defined OCI annotations, as config labels and manifest
/// annotations alike.
fn labels(image: &Image<'_>, created: &str) -> String {
    let mut pairs = vec![
        ("org.opencontainers.image.title", "tcptrace".to_owned()),
        (
            "org.opencontainers.image.description",
            "eBPF exporter of TCP socket states for Prometheus".to_owned(),
        ),
        ("org.opencontainers.image.version", image.version.to_owned()),
        ("org.opencontainers.image.created", created.to_owned()),
        (
            "org.opencontainers.image.licenses",
            "MIT OR Apache-2.0".to_owned(),
        ),
    ];
    if let Some(revision) = image.revision {
        pairs.push(("org.opencontainers.image.revision", revision.to_owned()));
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}:{}", json(key), json(value)))
        .collect();
    format!("{{{}}}", body.join(","))
}

struct Blob {
    digest: String,
    size: u64,
}

/// Moves `file` into the layout's blobs under its digest.
fn blob(blobs: &Path, file: &Path) -> Result<Blob, String> {
    let digest = sha256(file)?;
    let size = fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    let to: PathBuf = blobs.join(&digest);
    fs::rename(file, &to).map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(Blob { digest, size })
}

/// The hex SHA-256 of a file (coreutils' `sha256sum`).
pub fn sha256(file: &Path) -> Result<String, String> {
    let out = cmd::stdout(Command::new("sha256sum").arg(file))?;
    out.split_whitespace()
        .next()
        .filter(|hex| hex.len() == 64)
        .map(str::to_owned)
        .ok_or(format!("sha256sum {}: {out:?}", file.display()))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a time in seconds since the epoch.
fn rfc3339(epoch: u64) -> Result<String, String> {
    let out = cmd::stdout(
        Command::new("date")
            .args(["-u", "-d"])
            .arg(format!("@{epoch}"))
            .arg("+%Y-%m-%dT%H:%M:%SZ"),
    )?;
    Ok(out.trim().to_owned())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A JSON string.
pub fn json(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::json;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json("tcptrace:0.1.0"), "\"tcptrace:0.1.0\"");
    }
}
