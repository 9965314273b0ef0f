//! What a cgroup path says about its processes: the container and the
//! runtime that made it, the Kubernetes pod and its quality-of-service class,
//! or the systemd
//! unit. Read from the path alone, with no runtime asked; names come later
//! from [`crate::host::containers`].
//!
//! The shapes recognised, by the runtimes' own naming:
//! - docker: `docker-<id>.scope` (systemd driver), `/docker/<id>` (cgroupfs);
//! - podman: `libpod-<id>.scope` or `libpod-<id>`, its `conmon` monitor
//!   (`libpod-conmon-<id>`) being no container of its own;
//! - containerd's CRI plugin: `cri-containerd-<id>.scope`;
//! - cri-o: `crio-<id>.scope`, its monitor `crio-conmon-<id>.scope` aside;
//! - kubelet: `kubepods-<qos>-pod<uid>.slice` (systemd driver, the uid's `-`
//!   written `_`, Guaranteed pods without a class level) or
//!   `/kubepods/<qos>/pod<uid>/<id>` (cgroupfs driver, the runtime unnamed);
//! - systemd: the innermost `.service` or `.scope` unit.

/// The software that made a container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
        }
    }
}

/// A Kubernetes pod's quality-of-service class, as kubelet names its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// What one cgroup path tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CgroupIdentity {
    /// `None` also for a container whose runtime the path does not name
    /// (kubelet's cgroupfs layout).
    pub runtime: Option<Runtime>,
    /// The full id, lowercase hex, as the runtime's API knows it.
    pub container_id: Option<String>,
    /// The pod's UID, with dashes.
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
    /// The innermost systemd `.service` or `.scope` unit.
    pub unit: Option<String>,
}

/// Container ids are 64 hex digits for every runtime named here.
const ID_LEN: usize = 64;

fn container_id(text: &str) -> Option<String> {
    (text.len() == ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// A container's cgroup directory name, systemd's or cgroupfs's.
fn container(component: &str) -> Option<(Option<Runtime>, String)> {
    let scope = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in [
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
    ] {
        if let Some(id) = scope.strip_prefix(prefix) {
            // The conmon monitors are named after the container they watch.
            return container_id(id).map(|id| (Some(runtime), id));
        }
    }
    container_id(component).map(|id| (None, id))
}

/// A kubelet pod slice or directory: its UID and class.
fn pod(component: &str, parent: Option<&str>) -> Option<(String, Qos)> {
    if let Some(slice) = component
        .strip_prefix("kubepods-")
        .and_then(|rest| rest.strip_suffix(".slice"))
    {
        let (qos, uid) = match slice.split_once("-pod") {
            Some(("burstable", uid)) => (Qos::Burstable, uid),
            Some(("besteffort", uid)) => (Qos::BestEffort, uid),
            _ => (Qos::Guaranteed, slice.strip_prefix("pod")?),
        };
        return pod_uid(&uid.replace('_', "-")).map(|uid| (uid, qos));
    }
    let uid = pod_uid(component.strip_prefix("pod")?)?;
    let qos = match parent? {
        "burstable" => Qos::Burstable,
        "besteffort" => Qos::BestEffort,
        "kubepods" => Qos::Guaranteed,
        _ => return None,
    };
    Some((uid, qos))
}

/// A pod UID: a UUID, 36 characters of hex and dashes.
fn pod_uid(text: &str) -> Option<String> {
    (text.len() == 36 && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| text.to_ascii_lowercase())
}

/// Reads a cgroup path (as `/proc/<pid>/cgroup` names it).
pub fn identify(path: &str) -> CgroupIdentity {
    let mut identity = CgroupIdentity::default();
    let mut parent = None;
    let mut in_kubepods = false;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        in_kubepods |= component.starts_with("kubepods");
        if let Some((uid, qos)) = pod(component, parent) {
            identity.pod_uid = Some(uid);
            identity.qos = Some(qos);
        } else if let Some((runtime, id)) = container(component) {
            // A bare id is a container only where a runtime's or kubelet's
            // parent says so.
            let named_parent = matches!(parent, Some("docker" | "libpod_parent"));
            if runtime.is_some() || named_parent || identity.pod_uid.is_some() {
                identity.runtime = runtime.or(match parent {
                    Some("docker") => Some(Runtime::Docker),
                    Some("libpod_parent") => Some(Runtime::Podman),
                    _ => None,
                });
                identity.container_id = Some(id);
            }
        } else if matches!(component.rsplit_once('.'), Some((_, "service" | "scope"))) {
            identity.unit = Some(component.to_owned());
        }
        parent = Some(component);
    }
    if !in_kubepods {
        identity.pod_uid = None;
        identity.qos = None;
    }
    // The units around a container are the runtime's or a user manager's,
    // not the container's own.
    if identity.container_id.is_some() {
        identity.unit = None;
    }
    identity
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const UID: &str = "8d2c7a4e-1b3f-4c5d-9e6f-0a1b2c3d4e5f";

    fn container_of(path: &str) -> (Option<Runtime>, Option<String>) {
        let identity = identify(path);
        (identity.runtime, identity.container_id)
    }

    #[test]
    fn runtimes_by_their_naming() {
        let id = Some(ID.to_owned());
        for (path, runtime) in [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (format!("/libpod_parent/{ID}"), Runtime::Podman),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            (format!("/system.slice/crio-{ID}.scope"), Runtime::CriO),
        ] {
            assert_eq!(container_of(&path), (Some(runtime), id.clone()), "{path}");
            assert_eq!(identify(&path).unit, None, "{path}");
        }
        // Uppercase hex is the same id.
        assert_eq!(
            container_of(&format!("/docker/{}", ID.to_uppercase())).1,
            id
        );
    }

    #[test]
    fn monitors_and_lookalikes_are_no_containers() {
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/system.slice/crio-conmon-{ID}.scope"),
            "/docker/abc".to_owned(),
            format!("/docker-{}.scope", &ID[1..]),
            // A bare id under an unknown parent could be anything.
            format!("/user.slice/{ID}"),
            "/".to_owned(),
            String::new(),
        ] {
            assert_eq!(container_of(&path), (None, None), "{path}");
        }
    }

    #[test]
    fn kubelet_systemd_slices() {
        let uid = UID.replace('-', "_");
        let burstable = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
        );
        let identity = identify(&burstable);
        assert_eq!(identity.runtime, Some(Runtime::Containerd));
        assert_eq!(identity.container_id.as_deref(), Some(ID));
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
        assert_eq!(identity.qos, Some(Qos::Burstable));
        assert_eq!(identity.unit, None);

        let besteffort = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope"
        );
        assert_eq!(identify(&besteffort).qos, Some(Qos::BestEffort));
        assert_eq!(identify(&besteffort).runtime, Some(Runtime::CriO));
        let guaranteed = format!("/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID}.scope");
        assert_eq!(identify(&guaranteed).qos, Some(Qos::Guaranteed));
        assert_eq!(identify(&guaranteed).pod_uid.as_deref(), Some(UID));
        // Under a prefix of its own (a nested hierarchy, a test's cgroup).
        let nested = format!("/outer{burstable}");
        assert_eq!(identify(&nested), identity);
    }

    #[test]
    fn kubelet_cgroupfs_directories() {
        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        let identity = identify(&path);
        assert_eq!(identity.runtime, None);
        assert_eq!(identity.container_id.as_deref(), Some(ID));
        assert_eq!(identity.pod_uid.as_deref(), Some(UID));
        assert_eq!(identity.qos, Some(Qos::Burstable));
        let guaranteed = identify(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(guaranteed.qos, Some(Qos::Guaranteed));
        // The pod's own cgroup: a pod, no container yet.
        let sandbox = identify(&format!("/kubepods/besteffort/pod{UID}"));
        assert_eq!(sandbox.qos, Some(Qos::BestEffort));
        assert_eq!(sandbox.container_id, None);
        // "pod<uid>" outside kubepods is not a pod.
        assert_eq!(identify(&format!("/other/pod{UID}")).pod_uid, None);
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            identify("/system.slice/nginx.service").unit.as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            identify("/user.slice/user-1000.slice/session-3.scope")
                .unit
                .as_deref(),
            Some("session-3.scope")
        );
        let plain = identify("/system.slice/nginx.service");
        assert_eq!((plain.runtime, plain.container_id), (None, None));
        assert_eq!(identify("/tcptrace-test-1-a"), CgroupIdentity::default());
    }
}
