use std::{io::BufRead, os::unix::net::UnixListener, thread};

use super::*;

const ID: &str = "3f4e1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
const UID: &str = "8d2c7a4e-1b3f-4c5d-9e6f-0a1b2c3d4e5f";

/// A directory of its own under the system's temporary one, removed after.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-containers-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Serves `connections` connections on `socket`, each answered by `answer`
/// after the request's head was read; returns the requests' first lines.
fn serve(
    socket: &Path,
    connections: usize,
    answer: impl Fn(&str) -> Vec<u8> + Send + 'static,
) -> thread::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        let mut requests = Vec::new();
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let _ = stream.write_all(&answer(first.trim_end()));
            requests.push(first.trim_end().to_owned());
        }
        requests
    })
}

fn sources(dir: &Path) -> Sources {
    Sources {
        docker_socket: dir.join("docker.sock"),
        podman_socket: dir.join("podman.sock"),
        pods_dir: dir.join("pods"),
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}").into_bytes()
}

#[test]
fn names_and_images_from_the_runtimes_api() {
    let dir = TempDir::new("api");
    let sources = sources(&dir.0);
    let server = serve(&sources.podman_socket, 2, |request| {
        if request.contains(ID) {
            ok(r#"{"Id":"x","Name":"/leaky-a","Config":{"Image":"localhost/leaky:test"}}"#)
        } else {
            b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"no such container\"}".to_vec()
        }
    });
    let containers = Containers::new(sources);
    let now = Instant::now();
    let found = containers
        .describe(&format!("/libpod_parent/libpod-{ID}"), now)
        .unwrap();
    assert_eq!(found.runtime, Some(Runtime::Podman));
    assert_eq!(found.container_id.as_deref(), Some(ID));
    assert_eq!(found.container_name.as_deref(), Some("leaky-a"));
    assert_eq!(found.image.as_deref(), Some("localhost/leaky:test"));
    assert_eq!(found.container_label(), "leaky-a");
    // Cached: asked once.
    let again = containers.describe(&format!("/libpod_parent/libpod-{ID}"), now);
    assert_eq!(again.as_deref(), Some(&*found));
    // Not this runtime's: an answer, with no names.
    let other = "a".repeat(64);
    let unknown = containers
        .describe(&format!("/libpod_parent/libpod-{other}"), now)
        .unwrap();
    assert_eq!(unknown.container_name, None);
    assert_eq!(unknown.container_label(), "aaaaaaaaaaaa");
    let requests = server.join().unwrap();
    assert_eq!(
        requests,
        [
            format!("GET /containers/{ID}/json HTTP/1.0"),
            format!("GET /containers/{other}/json HTTP/1.0"),
        ]
    );
}

#[test]
fn an_absent_socket_leaves_the_names_empty() {
    let dir = TempDir::new("absent");
    let containers = Containers::new(sources(&dir.0));
    let found = containers
        .describe(&format!("/system.slice/docker-{ID}.scope"), Instant::now())
        .unwrap();
    assert_eq!(found.runtime, Some(Runtime::Docker));
    assert_eq!(found.container_id.as_deref(), Some(ID));
    assert_eq!(
        (found.container_name.as_ref(), found.image.as_ref()),
        (None, None)
    );
    // A process outside containers, pods and units: nothing to describe.
    assert_eq!(containers.describe("/tcptrace-test", Instant::now()), None);
    let unit = containers
        .describe("/system.slice/nginx.service", Instant::now())
        .unwrap();
    assert_eq!(unit.unit.as_deref(), Some("nginx.service"));
    assert_eq!(unit.container_label(), "");
}

/// A runtime that accepts and never answers costs one timeout, then is left
/// alone for [`RETRY_AFTER`]; garbage is no answer either.
#[test]
fn a_hanging_or_garbled_runtime_is_bounded_and_left_alone() {
    let dir = TempDir::new("bad");
    let sources = sources(&dir.0);
    // Accepts (the kernel does, into the backlog) and never reads.
    let _hanging = UnixListener::bind(&sources.podman_socket).unwrap();
    let garbage = serve(&sources.docker_socket, 1, |_| {
        b"\x00\x01garbage\r\n\r\n".to_vec()
    });
    let containers = Containers::new(sources);
    let now = Instant::now();
    let started = Instant::now();
    let hung = containers
        .describe(&format!("/libpod_parent/libpod-{ID}"), now)
        .unwrap();
    let took = started.elapsed();
    assert!(took >= TIMEOUT && took < TIMEOUT * 2, "{took:?}");
    assert_eq!(hung.container_name, None);
    assert_eq!(hung.container_id.as_deref(), Some(ID));
    // Another container of the same runtime: not asked while it is down.
    let started = Instant::now();
    let other = format!("/libpod_parent/libpod-{}", "b".repeat(64));
    assert_eq!(
        containers.describe(&other, now).unwrap().container_name,
        None
    );
    assert!(started.elapsed() < TIMEOUT / 2);

    let garbled = containers.describe(&format!("/docker/{ID}"), now).unwrap();
    assert_eq!(garbled.container_name, None);
    assert_eq!(garbage.join().unwrap().len(), 1);
    // Both are down; a retry waits for RETRY_AFTER.
    let cache = containers.cache();
    assert_eq!(cache.down.len(), 2);
    assert_eq!(cache.said.len(), 2);
}

#[test]
fn pods_from_kubelets_directories() {
    let dir = TempDir::new("pods");
    let sources = sources(&dir.0);
    let pod = sources.pods_dir.join(format!("shop_checkout-7d4b9_{UID}"));
    for container in ["app", "sidecar"] {
        fs::create_dir_all(pod.join(container)).unwrap();
    }
    fs::create_dir_all(
        sources
            .pods_dir
            .join("other_pod_11111111-2222-3333-4444-555555555555/x"),
    )
    .unwrap();
    let logs = dir.0.join("containers");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join(format!("checkout-7d4b9_shop_app-{ID}.log")), "").unwrap();
    fs::write(
        logs.join(format!(
            "checkout-7d4b9_shop_sidecar-{}.log",
            "c".repeat(64)
        )),
        "",
    )
    .unwrap();
    let containers = Containers::new(sources.clone());
    let uid = UID.replace('-', "_");
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
    );
    let found = containers.describe(&path, Instant::now()).unwrap();
    assert_eq!(found.runtime, Some(Runtime::Containerd));
    assert_eq!(
        found.pod,
        Some(Pod {
            uid: UID.to_owned(),
            qos: Qos::Burstable,
            namespace: Some("shop".to_owned()),
            name: Some("checkout-7d4b9".to_owned()),
            container: Some("app".to_owned()),
        })
    );
    assert_eq!(found.container_label(), "app");

    // A pod kubelet has no directory for: the UID and class, no names.
    let absent = format!(
        "/kubepods.slice/kubepods-pod99999999_2222_3333_4444_555555555555.slice/crio-{ID}.scope"
    );
    let pod = containers
        .describe(&absent, Instant::now())
        .unwrap()
        .pod
        .clone()
        .unwrap();
    assert_eq!((pod.namespace, pod.name, pod.container), (None, None, None));
    assert_eq!(pod.qos, Qos::Guaranteed);

    let found = find_sources(&sources);
    assert_eq!(found.pods_dir, Some((sources.pods_dir.clone(), 2)));
    assert_eq!((found.docker_socket, found.podman_socket), (None, None));
}
