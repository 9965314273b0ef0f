//! Who holds a socket: the process with a file descriptor on it, or, for a
//! socket no process holds any more (orphaned by `close`), the task that last
//! acted on it in its own context.
//!
//! The state tracepoint often runs in softirq, where the current task is
//! whatever was on the CPU; only the transitions a system call makes
//! ([`tcptrace_common::in_task_context`]) carry a task, the socket's user. Holders are found the way
//! `ss -p` does, through `/proc/<pid>/fd`, and only for the few sockets
//! someone asks about (stale ones, API queries), never on the event path.

use std::{
    fs,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    events::{Endpoints, Task},
    support::fasthash::{FastMap, FastSet},
    track::lookups::Lookups,
};

/// A process, as `/proc` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// The cgroup path, which names the container or systemd unit.
    pub cgroup: String,
}

/// How a socket's owner is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// The process holds a file descriptor on the socket now.
    Fd,
    /// No process holds it; this task connected, listened or closed it.
    Task,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub process: Arc<Process>,
    pub source: OwnerSource,
}

/// Reads a process from `/proc`; `None` once it has exited.
pub fn read_process(pid: u32) -> Option<Process> {
    let dir = format!("/proc/{pid}");
    let comm = fs::read_to_string(format!("{dir}/comm")).ok()?;
    let cmdline = fs::read(format!("{dir}/cmdline")).unwrap_or_default();
    let cgroup = fs::read_to_string(format!("{dir}/cgroup")).unwrap_or_default();
    Some(Process {
        pid,
        comm: comm.trim_end().to_owned(),
        cmdline: join_cmdline(&cmdline),
        cgroup: cgroup_path(&cgroup),
    })
}

/// `/proc/<pid>/cmdline` is NUL-separated and NUL-terminated.
fn join_cmdline(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.trim_end_matches('\0').replace('\0', " ")
}

/// The most telling path of `/proc/<pid>/cgroup`: the unified hierarchy's,
/// else systemd's named one, else the first controller's that is not the
/// root; "/" when the process sits in the root everywhere.
fn cgroup_path(text: &str) -> String {
    let mut systemd = None;
    let mut first = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path == "/" {
            continue;
        }
        match controllers {
            "" => return path.to_owned(),
            "name=systemd" => systemd = systemd.or(Some(path)),
            _ => first = first.or(Some(path)),
        }
    }
    systemd.or(first).unwrap_or("/").to_owned()
}

/// Finds a process holding each socket inode of `wanted` by reading every
/// `/proc/<pid>/fd`, lowest pid first, stopping once all are found; where
/// several processes share a socket (after fork), the lowest pid is named.
pub fn holders<S: std::hash::BuildHasher>(
    wanted: &std::collections::HashSet<u64, S>,
) -> FastMap<u64, u32> {
    let mut found = FastMap::default();
    if wanted.is_empty() {
        return found;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        // Processes vanish mid-walk, and some are not ours to read.
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            if wanted.contains(&inode) {
                found.entry(inode).or_insert(pid);
            }
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

/// The inode of an fd link `socket:[12345]`.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How long a resolved owner is trusted before it is looked up again (a
/// socket can be passed to another process, or orphaned by `close`).
pub const OWNER_TTL: Duration = Duration::from_secs(30);

/// Owners found so far, by socket cookie, and when each was looked up
/// (`None`: nobody was found then).
#[derive(Debug, Default)]
pub struct Owners {
    by_cookie: FastMap<u64, (Instant, Option<Owner>)>,
}

impl Owners {
    pub fn get(&self, cookie: u64) -> Option<&Owner> {
        self.by_cookie.get(&cookie)?.1.as_ref()
    }

    /// Whether `cookie` was never looked up, or too long ago.
    pub fn stale(&self, cookie: u64, now: Instant) -> bool {
        self.by_cookie
            .get(&cookie)
            .is_none_or(|(at, _)| now.duration_since(*at) >= OWNER_TTL)
    }

    pub fn store(&mut self, now: Instant, resolved: Vec<(u64, Option<Owner>)>) {
        for (cookie, owner) in resolved {
            self.by_cookie.insert(cookie, (now, owner));
        }
    }

    /// Forgets the sockets `alive` no longer knows.
    pub fn retain(&mut self, alive: impl Fn(u64) -> bool) {
        self.by_cookie.retain(|&cookie, _| alive(cookie));
    }

    pub fn len(&self) -> usize {
        self.by_cookie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cookie.is_empty()
    }
}

/// A socket whose owner is wanted: its kernel inode (0 when no process holds
/// it, as for timewait and orphaned sockets) and the task that last acted on
/// it, if any.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub cookie: u64,
    pub inode: u64,
    pub task: Option<Task>,
}

/// Names the owner of each wanted socket: the holder of its inode, else the
/// task that last acted on it; blocking (reads `/proc`).
pub fn resolve(wanted: &[Wanted]) -> Vec<(u64, Option<Owner>)> {
    let inodes: FastSet<u64> = wanted
        .iter()
        .map(|w| w.inode)
        .filter(|&inode| inode != 0)
        .collect();
    let holders = holders(&inodes);
    let mut processes: FastMap<u32, Option<Arc<Process>>> = FastMap::default();
    let mut process = |pid: u32| {
        processes
            .entry(pid)
            .or_insert_with(|| read_process(pid).map(Arc::new))
            .clone()
    };
    wanted
        .iter()
        .map(|w| {
            let held = holders.get(&w.inode).and_then(|&pid| process(pid));
            let owner = match (held, w.task) {
                (Some(process), _) => Some(Owner {
                    process,
                    source: OwnerSource::Fd,
                }),
                (None, Some(task)) => Some(Owner {
                    // The process as it is now, or as the event saw it.
                    process: process(task.pid).unwrap_or_else(|| {
                        Arc::new(Process {
                            pid: task.pid,
                            comm: task.comm.as_str().into_owned(),
                            cmdline: String::new(),
                            cgroup: String::new(),
                        })
                    }),
                    source: OwnerSource::Task,
                }),
                (None, None) => None,
            };
            (w.cookie, owner)
        })
        .collect()
}

/// Names the owners of tracked sockets (cookie, endpoints, last task):
/// their inodes come from exact kernel lookups in their namespaces;
/// blocking.
pub fn find(sockets: &[(u64, Endpoints, Option<Task>)]) -> Vec<(u64, Option<Owner>)> {
    let pending: Vec<(u64, Endpoints)> = sockets
        .iter()
        .map(|&(cookie, endpoints, _)| (cookie, endpoints))
        .collect();
    let inodes: FastMap<u64, u64> = Lookups::default()
        .find_blocking(&pending)
        .into_iter()
        .map(|(cookie, found)| (cookie, found.inode))
        .collect();
    let wanted: Vec<Wanted> = sockets
        .iter()
        .map(|&(cookie, _, task)| Wanted {
            cookie,
            inode: inodes.get(&cookie).copied().unwrap_or(0),
            task,
        })
        .collect();
    resolve(&wanted)
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        os::{fd::AsRawFd, unix::fs::MetadataExt},
    };

    use super::*;

    #[test]
    fn cgroup_paths() {
        let hybrid = "9:name=systemd:/system.slice/nginx.service\n4:memory:/x\n0::/\n";
        assert_eq!(cgroup_path(hybrid), "/system.slice/nginx.service");
        let unified = "0::/kubepods.slice/pod1/cri-containerd-ab.scope\n";
        assert_eq!(
            cgroup_path(unified),
            "/kubepods.slice/pod1/cri-containerd-ab.scope"
        );
        assert_eq!(cgroup_path("1:cpu:/\n0::/\n"), "/");
        assert_eq!(
            cgroup_path("4:memory:/docker/abc\n1:cpu:/\n"),
            "/docker/abc"
        );
        assert_eq!(cgroup_path(""), "/");
    }

    #[test]
    fn cmdlines() {
        assert_eq!(join_cmdline(b"nginx: worker\0"), "nginx: worker");
        assert_eq!(
            join_cmdline(b"/usr/bin/java\0-jar\0app.jar\0"),
            "/usr/bin/java -jar app.jar"
        );
        assert_eq!(join_cmdline(b""), "");
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(b"socket:[4026532]"), Some(4_026_532));
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
    }

    /// This process's own listening socket is found through /proc.
    #[test]
    fn finds_the_holder_of_an_inode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let inode = socket_inode(link.as_os_str().as_encoded_bytes()).unwrap();
        let stat = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        assert_eq!(stat.ino(), inode);
        let wanted: FastSet<u64> = [inode, u64::MAX].into_iter().collect();
        let found = holders(&wanted);
        assert_eq!(found.get(&inode), Some(&std::process::id()));
        assert_eq!(found.len(), 1);

        let resolved = resolve(&[
            Wanted {
                cookie: 1,
                inode,
                task: None,
            },
            Wanted {
                cookie: 2,
                inode: 0,
                task: Some(Task {
                    pid: std::process::id(),
                    tid: std::process::id(),
                    comm: crate::events::Comm(*b"worker\0\0\0\0\0\0\0\0\0\0"),
                }),
            },
            Wanted {
                cookie: 3,
                inode: 0,
                task: None,
            },
        ]);
        let me = read_process(std::process::id()).unwrap();
        assert_eq!(resolved[0].0, 1);
        let owner = resolved[0].1.as_ref().unwrap();
        assert_eq!((*owner.process).clone(), me);
        assert_eq!(owner.source, OwnerSource::Fd);
        let owner = resolved[1].1.as_ref().unwrap();
        assert_eq!(owner.process.pid, std::process::id());
        assert_eq!(owner.source, OwnerSource::Task);
        assert!(resolved[2].1.is_none());
    }
}
