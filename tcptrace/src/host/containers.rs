//! The container and pod behind a cgroup, by name: the container's name and
//! image from its runtime's API (the Docker-compatible REST API that docker
//! and podman serve on a Unix socket), and a Kubernetes pod's namespace,
//! name and container from kubelet's log directories
//! (`<pods>/<namespace>_<pod>_<uid>/<container>/`).
//!
//! Every lookup is bounded ([`TIMEOUT`] per request) and cached, failures
//! too, so that a runtime that hangs or answers garbage costs one timeout a
//! [`RETRY_AFTER`], on the owner-lookup threads only. A source that does not
//! answer leaves its fields empty: nothing is guessed.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

use crate::host::cgroup::{self, Qos, Runtime};

/// Where names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub docker_socket: PathBuf,
    pub podman_socket: PathBuf,
    /// kubelet's pod log directories.
    pub pods_dir: PathBuf,
}

pub const DEFAULT_DOCKER_SOCKET: &str = "/run/docker.sock";
pub const DEFAULT_PODMAN_SOCKET: &str = "/run/podman/podman.sock";
pub const DEFAULT_PODS_DIR: &str = "/var/log/pods";

impl Default for Sources {
    fn default() -> Self {
        Self {
            docker_socket: DEFAULT_DOCKER_SOCKET.into(),
            podman_socket: DEFAULT_PODMAN_SOCKET.into(),
            pods_dir: DEFAULT_PODS_DIR.into(),
        }
    }
}

/// The longest one request to a runtime may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// A source that failed is not asked again for this long, and a name not
/// found is looked up again after it.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Names found are trusted this long (a container can be renamed).
const FOUND_TTL: Duration = Duration::from_secs(600);
/// The largest runtime answer read; an inspect is a few kilobytes.
const MAX_ANSWER: u64 = 1 << 20;
/// Cached cgroups; past this the cache starts over.
const MAX_CACHED: usize = 4096;

/// A pod, as kubelet's cgroups and log directories name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pod {
    pub uid: String,
    pub qos: Qos,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The container's name within the pod.
    pub container: Option<String>,
}

/// The container, pod or systemd unit of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    pub runtime: Option<Runtime>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub image: Option<String>,
    pub pod: Option<Pod>,
    pub unit: Option<String>,
}

impl Workload {
    /// The `container` label: the pod's container name, else the runtime's
    /// name, else the id's first 12 digits; empty outside containers.
    pub fn container_label(&self) -> String {
        let pod_container = self.pod.as_ref().and_then(|pod| pod.container.as_deref());
        match (
            pod_container,
            self.container_name.as_deref(),
            &self.container_id,
        ) {
            (Some(name), _, _) | (None, Some(name), _) => name.to_owned(),
            (None, None, Some(id)) => id.chars().take(12).collect(),
            (None, None, None) => String::new(),
        }
    }
}

/// Which sources answered, for `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub docker_socket: Option<PathBuf>,
    pub podman_socket: Option<PathBuf>,
    /// The pods directory and how many pods it holds.
    pub pods_dir: Option<(PathBuf, usize)>,
}

/// Checks which sources exist: a socket that accepts a connection and
/// answers `/_ping`, a pods directory that can be read.
pub fn find_sources(sources: &Sources) -> Found {
    let answers =
        |socket: &Path| matches!(get(socket, "/_ping"), Ok((200, _))).then(|| socket.to_path_buf());
    Found {
        docker_socket: answers(&sources.docker_socket),
        podman_socket: answers(&sources.podman_socket),
        pods_dir: fs::read_dir(&sources.pods_dir)
            .ok()
            .map(|entries| (sources.pods_dir.clone(), entries.flatten().count())),
    }
}

/// Names by cgroup path, cached; shared by the threads that find owners.
#[derive(Debug)]
pub struct Containers {
    sources: Sources,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// By cgroup path: when looked up, whether every name was found, and
    /// what (`None`: no container, pod or unit).
    workloads: FxHashMap<String, (Instant, bool, Option<Arc<Workload>>)>,
    /// Sockets that failed, until when they are left alone.
    down: FxHashMap<PathBuf, Instant>,
    /// Sockets whose failure was logged, until they answer again.
    said: FxHashSet<PathBuf>,
}

impl Containers {
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The workload of a process in cgroup `path`; blocking (it may ask a
    /// runtime, within [`TIMEOUT`]).
    pub fn describe(&self, path: &str, now: Instant) -> Option<Arc<Workload>> {
        if let Some((at, complete, workload)) = self.cache().workloads.get(path) {
            let ttl = if *complete { FOUND_TTL } else { RETRY_AFTER };
            if now.duration_since(*at) < ttl {
                return workload.clone();
            }
        }
        let identity = cgroup::identify(path);
        let mut complete = true;
        let workload = (identity != cgroup::CgroupIdentity::default()).then(|| {
            let mut workload = Workload {
                runtime: identity.runtime,
                container_id: identity.container_id.clone(),
                unit: identity.unit.clone(),
                ..Workload::default()
            };
            if let (Some(runtime), Some(id)) = (identity.runtime, &identity.container_id) {
                match self.inspect(runtime, id, now) {
                    Some((name, image)) => {
                        workload.container_name = name;
                        workload.image = image;
                    }
                    None => complete = false,
                }
            }
            if let (Some(uid), Some(qos)) = (identity.pod_uid, identity.qos) {
                let pod = pod_names(
                    &self.sources.pods_dir,
                    &uid,
                    identity.container_id.as_deref(),
                );
                complete &= pod.is_some();
                let (namespace, name, container) = pod.unwrap_or_default();
                workload.pod = Some(Pod {
                    uid,
                    qos,
                    namespace,
                    name,
                    container,
                });
            }
            Arc::new(workload)
        });
        let mut cache = self.cache();
        if cache.workloads.len() >= MAX_CACHED {
            cache.workloads.clear();
        }
        cache
            .workloads
            .insert(path.to_owned(), (now, complete, workload.clone()));
        workload
    }

    /// The name and image of a container from its runtime's API; `None`
    /// when the runtime could not be asked (it is asked again later).
    fn inspect(
        &self,
        runtime: Runtime,
        id: &str,
        now: Instant,
    ) -> Option<(Option<String>, Option<String>)> {
        let socket = match runtime {
            Runtime::Docker => &self.sources.docker_socket,
            Runtime::Podman => &self.sources.podman_socket,
            // Their API is CRI's gRPC: their pods are named from kubelet's
            // directories instead.
            Runtime::Containerd | Runtime::CriO => return Some((None, None)),
        };
        if self
            .cache()
            .down
            .get(socket)
            .is_some_and(|until| now < *until)
        {
            return None;
        }
        match inspect(socket, id) {
            Ok(found) => {
                let mut cache = self.cache();
                cache.down.remove(socket);
                if cache.said.remove(socket) {
                    tracing::info!(socket = %socket.display(), "the container runtime answers again");
                }
                Some(found)
            }
            Err(error) => {
                let mut cache = self.cache();
                cache.down.insert(socket.clone(), now + RETRY_AFTER);
                // An absent socket is a runtime not installed: no news.
                if !matches!(error, InspectError::Absent) && cache.said.insert(socket.clone()) {
                    tracing::warn!(
                        socket = %socket.display(),
                        runtime = runtime.name(),
                        "container names unavailable: {error}; asking again every {}s",
                        RETRY_AFTER.as_secs()
                    );
                }
                None
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum InspectError {
    #[error("no socket")]
    Absent,
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {}s", TIMEOUT.as_secs())]
    TimedOut,
    #[error("the exchange failed: {0}")]
    Io(std::io::Error),
    #[error("not an HTTP answer")]
    NotHttp,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("not a container inspection: {0}")]
    Json(serde_json::Error),
}

/// What a container inspection is read for (Docker's and podman's alike).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspection {
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: Option<InspectionConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectionConfig {
    #[serde(default)]
    image: String,
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// `GET /containers/<id>/json`: the name (without its leading `/`) and the
/// image. A 404 (not one of this runtime's) is an answer: no names.
fn inspect(socket: &Path, id: &str) -> Result<(Option<String>, Option<String>), InspectError> {
    let (status, body) = get(socket, &format!("/containers/{id}/json"))?;
    match status {
        200 => {}
        404 => return Ok((None, None)),
        status => return Err(InspectError::Status(status)),
    }
    let inspection: Inspection = serde_json::from_slice(&body).map_err(InspectError::Json)?;
    let name = non_empty(inspection.name.trim_start_matches('/'));
    let image = inspection
        .config
        .and_then(|config| non_empty(&config.image));
    Ok((name, image))
}

/// A read or write that timed out is a runtime that does not answer.
fn exchange_error(error: std::io::Error) -> InspectError {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => InspectError::TimedOut,
        _ => InspectError::Io(error),
    }
}

/// One HTTP/1.0 GET on a Unix socket (the server closes when done, so no
/// chunking or keep-alive); the status and body.
fn get(socket: &Path, path: &str) -> Result<(u16, Vec<u8>), InspectError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    if !socket.exists() {
        return Err(InspectError::Absent);
    }
    let address = SockAddr::unix(socket).map_err(InspectError::Connect)?;
    let connection =
        Socket::new(Domain::UNIX, Type::STREAM, None).map_err(InspectError::Connect)?;
    // Non-blocking underneath: a listener whose backlog is full fails at
    // once rather than blocking.
    connection
        .connect_timeout(&address, TIMEOUT)
        .map_err(InspectError::Connect)?;
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(connection));
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(exchange_error)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(exchange_error)?;
    let mut answer = Vec::new();
    let mut chunk = [0; 16 * 1024];
    loop {
        // Bounded as a whole, not per read: a trickle cannot stretch it.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(InspectError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(exchange_error)?;
        let read = stream.read(&mut chunk).map_err(exchange_error)?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..read]);
        if answer.len() as u64 > MAX_ANSWER {
            return Err(InspectError::NotHttp);
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(&answer) else {
        return Err(InspectError::NotHttp);
    };
    let status = response.code.ok_or(InspectError::NotHttp)?;
    Ok((status, answer[head..].to_vec()))
}

/// A pod's namespace, name and the container's name from kubelet's
/// `<pods>/<namespace>_<pod>_<uid>/<container>/` directories: the container
/// is the pod's only one, or the one whose `/var/log/containers` link
/// (`<pod>_<namespace>_<container>-<id>.log`, beside the pods directory)
/// carries its id. `None` when no directory has the pod.
fn pod_names(
    pods_dir: &Path,
    uid: &str,
    container_id: Option<&str>,
) -> Option<(Option<String>, Option<String>, Option<String>)> {
    let suffix = format!("_{uid}");
    let entry = fs::read_dir(pods_dir).ok()?.flatten().find(|entry| {
        entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(&suffix))
    })?;
    let dir_name = entry.file_name().to_str()?.to_owned();
    // Namespaces and pod names are DNS labels and subdomains: no `_`.
    let (namespace, pod) = dir_name.strip_suffix(&suffix)?.split_once('_')?;
    let containers: Vec<String> = fs::read_dir(entry.path())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let container = match (containers.as_slice(), container_id) {
        ([only], _) => Some(only.clone()),
        (_, Some(id)) => {
            let logs = pods_dir.parent().map(|parent| parent.join("containers"));
            let prefix = format!("{pod}_{namespace}_");
            let ending = format!("-{id}.log");
            logs.and_then(|logs| fs::read_dir(logs).ok())
                .into_iter()
                .flatten()
                .flatten()
                .find_map(|e| {
                    let name = e.file_name().to_str()?.to_owned();
                    let container = name.strip_prefix(&prefix)?.strip_suffix(&ending)?;
                    containers
                        .iter()
                        .any(|c| c == container)
                        .then(|| container.to_owned())
                })
        }
        _ => None,
    };
    Some((Some(namespace.to_owned()), Some(pod.to_owned()), container))
}

#[cfg(test)]
mod tests;
