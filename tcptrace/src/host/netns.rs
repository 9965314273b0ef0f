//! Network namespaces: finding every one on the host, and running work
//! inside one on a short-lived thread that joins it, so that the caller's
//! namespace is never touched.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    fs::{self, File, Metadata},
    io,
    ops::ControlFlow,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    thread,
};

/// Why a namespace could not be found, entered or worked in.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("network namespace {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "network namespace {}: now leads to inode {found} instead of {expected} (its holder went away)",
        path.display()
    )]
    Changed {
        path: PathBuf,
        expected: u32,
        found: u64,
    },
    #[error("cannot start a thread to enter a network namespace: {source}")]
    Thread { source: io::Error },
    #[error("the helper thread for network namespace {} panicked", path.display())]
    HelperPanicked { path: PathBuf },
}

impl NamespaceError {
    /// The namespace's holder went away between listing and entering it:
    /// nothing is missing.
    pub fn vanished(&self) -> bool {
        match self {
            Self::Changed { .. } => true,
            Self::Open { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
            }
            Self::Thread { .. } | Self::HelperPanicked { .. } => false,
        }
    }
}

/// A network namespace found on the host.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Inode of the namespace (as in `/proc/<pid>/ns/net -> net:[inode]`).
    pub inode: u32,
    /// A path that opens it, e.g. `/proc/123/task/123/ns/net` or `/run/netns/foo`.
    pub path: PathBuf,
}

/// The calling thread's network namespace.
const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

/// Every distinct network namespace: the daemon's own, `/run/netns/*` and
/// `/var/run/netns/*`, `/proc/*/task/*/ns/net` (threads can sit in other
/// namespaces than their process). Deduplicated by inode; unreadable entries
/// (processes that exit meanwhile, permission) are skipped silently.
///
/// The daemon's own namespace comes first, as `/proc/self/ns/net` when the
/// main thread shares it with the calling thread. Bind mounts come before
/// processes because they last: a namespace's first thread in `/proc` order
/// may be one that only visits it (an `ip netns exec`, a helper thread of
/// this process) and is gone by the time the path is opened.
pub fn namespaces() -> Vec<Namespace> {
    let mut seen = HashSet::new();
    let mut list = Vec::new();
    let _ = scan_namespaces(|inode, path| {
        if seen.insert(inode) {
            list.push(Namespace { inode, path });
        }
        ControlFlow::Continue(())
    });
    list
}

/// A name for every namespace [`namespaces`] finds, by inode: `host` for the
/// daemon's own, the name `ip netns` gave it (`/run/netns/NAME`), or else the
/// first process found in it, as `COMM[PID]`.
pub fn names() -> HashMap<u32, String> {
    let host = own_inode();
    let mut names: HashMap<u32, String> = HashMap::new();
    if let Some(host) = host {
        names.insert(host, "host".to_owned());
    }
    let _ = scan_namespaces(|inode, path| {
        if Some(inode) == host {
            return ControlFlow::Continue(());
        }
        if path.starts_with("/run/netns") || path.starts_with("/var/run/netns") {
            // The name `ip netns` gave it wins over a process.
            if let Some(name) = path.file_name() {
                names.insert(inode, name.to_string_lossy().into_owned());
            }
        } else if !names.contains_key(&inode)
            && let Some(name) = process_name(&path)
        {
            names.insert(inode, name);
        }
        ControlFlow::Continue(())
    });
    names
}

/// `COMM[PID]` of the process of `/proc/PID/task/TID/ns/net`.
fn process_name(path: &Path) -> Option<String> {
    let pid = path.iter().nth(2)?.to_str()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(format!("{}[{pid}]", comm.trim_end()))
}

/// The namespace with inode `inode`, found where [`namespaces`] looks, in the
/// same order, stopping at the first match; `None` if no process, thread or
/// bind mount holds it (any more).
pub fn find_namespace(inode: u32) -> Option<Namespace> {
    let mut found = None;
    let _ = scan_namespaces(|candidate, path| {
        if candidate == inode {
            found = Some(Namespace { inode, path });
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    found
}

/// The calling thread's network namespace, under a path that leads to it
/// from any thread (`/proc/self/ns/net` when the main thread shares it, else
/// `/proc/<pid>/task/<tid>/ns/net`, valid while the calling thread lives).
pub fn current_namespace() -> Result<Namespace, NamespaceError> {
    let inode = current_netns()?;
    Ok(Namespace {
        inode,
        path: own_namespace_path(u64::from(inode)),
    })
}

/// Offers every namespace path [`namespaces`] considers, in its order and
/// with repetitions, to `visit` (as inode and path) until `visit` breaks.
fn scan_namespaces(mut visit: impl FnMut(u32, PathBuf) -> ControlFlow<()>) -> ControlFlow<()> {
    let own = fs::metadata(THREAD_SELF_NET).ok();
    // Device of the nsfs pseudo file system, once known: a file left in
    // `/run/netns` without its bind mount lives on another device.
    let nsfs_dev = own.as_ref().map(MetadataExt::dev);
    let mut offer = |meta: &Metadata, path: PathBuf| {
        if nsfs_dev.is_some_and(|dev| dev != meta.dev()) {
            return ControlFlow::Continue(());
        }
        match u32::try_from(meta.ino()) {
            Ok(inode) => visit(inode, path),
            Err(_) => ControlFlow::Continue(()),
        }
    };
    if let Some(own) = &own {
        offer(own, own_namespace_path(own.ino()))?;
    }
    for dir in ["/run/netns", "/var/run/netns"] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(meta) = fs::metadata(&path) {
                offer(&meta, path)?;
            }
        }
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for process in procs.flatten() {
            if !is_pid(&process.file_name()) {
                continue;
            }
            let mut task_dir = process.path();
            task_dir.push("task");
            let Ok(tasks) = fs::read_dir(&task_dir) else {
                continue;
            };
            for task in tasks.flatten() {
                let mut path = task.path();
                path.push("ns/net");
                if let Ok(meta) = fs::metadata(&path) {
                    offer(&meta, path)?;
                }
            }
        }
    }
    ControlFlow::Continue(())
}

fn is_pid(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit)
}

/// A path to the calling thread's namespace (inode `inode`) that other
/// threads can open too.
fn own_namespace_path(inode: u64) -> PathBuf {
    match fs::metadata("/proc/self/ns/net") {
        Ok(main) if main.ino() == inode => PathBuf::from("/proc/self/ns/net"),
        _ => current_thread_ns_path(),
    }
}

/// `/proc/<pid>/task/<tid>/ns/net` of the calling thread: unlike
/// `/proc/thread-self`, it names the same thread whoever opens it.
fn current_thread_ns_path() -> PathBuf {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()))
}

/// Inode of the calling thread's network namespace.
pub fn current_netns() -> Result<u32, NamespaceError> {
    let namespace_error = |source| NamespaceError::Open {
        path: PathBuf::from(THREAD_SELF_NET),
        source,
    };
    let meta = fs::metadata(THREAD_SELF_NET).map_err(namespace_error)?;
    u32::try_from(meta.ino())
        .map_err(|_| namespace_error(io::Error::other("namespace inode exceeds 32 bits")))
}

/// Runs `job` in namespace `ns`: directly when it is the calling thread's,
/// else on a short-lived helper thread that `setns()`es into it. The path is
/// opened and its inode checked on the calling thread first (see
/// [`crate::host::sock_diag::dump_namespace`]).
pub fn in_namespace<T: Send, E: From<NamespaceError> + Send>(
    ns: &Namespace,
    job: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    if current_netns().ok() == Some(ns.inode) {
        return job();
    }
    let namespace_error = |source| NamespaceError::Open {
        path: ns.path.clone(),
        source,
    };
    let file = File::open(&ns.path).map_err(namespace_error)?;
    let found = file.metadata().map_err(namespace_error)?.ino();
    if found != u64::from(ns.inode) {
        return Err(NamespaceError::Changed {
            path: ns.path.clone(),
            expected: ns.inode,
            found,
        }
        .into());
    }
    thread::scope(|scope| {
        let helper = thread::Builder::new()
            .name("tcptrace-diag".into())
            .spawn_scoped(scope, || {
                enter_namespace(&file, ns)?;
                job()
            })
            .map_err(|source| NamespaceError::Thread { source })?;
        // A joined thread's panic is returned here, not propagated by the scope.
        helper.join().map_err(|_| NamespaceError::HelperPanicked {
            path: ns.path.clone(),
        })?
    })
}

/// On the helper thread: joins the namespace open in `file` and checks that
/// it is still `ns`.
fn enter_namespace(file: &File, ns: &Namespace) -> Result<(), NamespaceError> {
    // SAFETY: `file` keeps the descriptor open for the call; setns only
    // changes the namespace membership of this (helper) thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NamespaceError::Open {
            path: ns.path.clone(),
            source: io::Error::last_os_error(),
        });
    }
    let joined = current_netns()?;
    if joined != ns.inode {
        return Err(NamespaceError::Changed {
            path: ns.path.clone(),
            expected: ns.inode,
            found: u64::from(joined),
        });
    }
    Ok(())
}

/// The inode of the namespace tcptrace's main thread is in: the host's when
/// it is deployed as intended (a systemd service, or a `DaemonSet` with
/// `hostNetwork`).
pub fn own_inode() -> Option<u32> {
    let inode = fs::metadata("/proc/self/ns/net").ok()?.ino();
    u32::try_from(inode).ok()
}
