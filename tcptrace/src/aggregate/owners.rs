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
    sync::Arc,
    time::{Duration, Instant},
};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    events::{Endpoints, Task},
    host::{
        containers::{Containers, Workload},
        procfs::{Process, holders, read_process},
    },
    track::lookups::Lookups,
};

/// How a socket's owner is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The process's container, pod or systemd unit, from its cgroup.
    pub workload: Option<Arc<Workload>>,
}

/// How long a resolved owner is trusted before it is looked up again (a
/// socket can be passed to another process, or orphaned by `close`).
pub const OWNER_TTL: Duration = Duration::from_secs(30);

/// Owners found so far, by socket cookie, and when each was looked up
/// (`None`: nobody was found then).
#[derive(Debug, Default)]
pub struct Owners {
    by_cookie: FxHashMap<u64, (Instant, Option<Owner>)>,
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
/// task that last acted on it, with its container; blocking (reads `/proc`,
/// may ask a container runtime).
pub fn resolve(wanted: &[Wanted], containers: &Containers) -> Vec<(u64, Option<Owner>)> {
    let inodes: FxHashSet<u64> = wanted
        .iter()
        .map(|w| w.inode)
        .filter(|&inode| inode != 0)
        .collect();
    let holders = holders(&inodes);
    let mut processes: FxHashMap<u32, Option<Arc<Process>>> = FxHashMap::default();
    let mut process = |pid: u32| {
        processes
            .entry(pid)
            .or_insert_with(|| read_process(pid).map(Arc::new))
            .clone()
    };
    let now = Instant::now();
    let workload = |process: &Process| containers.describe(&process.cgroup, now);
    wanted
        .iter()
        .map(|w| {
            let held = holders.get(&w.inode).and_then(|&pid| process(pid));
            let owner = match (held, w.task) {
                (Some(process), _) => Some(Owner {
                    workload: workload(&process),
                    process,
                    source: OwnerSource::Fd,
                }),
                (None, Some(task)) => {
                    // The process as it is now, or as the event saw it.
                    let process = process(task.pid).unwrap_or_else(|| {
                        Arc::new(Process {
                            pid: task.pid,
                            comm: task.comm.as_str().into_owned(),
                            cmdline: String::new(),
                            cgroup: String::new(),
                        })
                    });
                    Some(Owner {
                        workload: workload(&process),
                        process,
                        source: OwnerSource::Task,
                    })
                }
                (None, None) => None,
            };
            (w.cookie, owner)
        })
        .collect()
}

/// Names the owners of tracked sockets (cookie, endpoints, last task):
/// their inodes come from exact kernel lookups in their namespaces;
/// blocking.
pub fn find(
    sockets: &[(u64, Endpoints, Option<Task>)],
    containers: &Containers,
) -> Vec<(u64, Option<Owner>)> {
    let pending: Vec<(u64, Endpoints)> = sockets
        .iter()
        .map(|&(cookie, endpoints, _)| (cookie, endpoints))
        .collect();
    let inodes: FxHashMap<u64, u64> = Lookups::default()
        .find_blocking(&pending)
        .into_iter()
        .filter_map(|(cookie, found)| Some((cookie, found?.inode)))
        .collect();
    let wanted: Vec<Wanted> = sockets
        .iter()
        .map(|&(cookie, _, task)| Wanted {
            cookie,
            inode: inodes.get(&cookie).copied().unwrap_or(0),
            task,
        })
        .collect();
    resolve(&wanted, containers)
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        os::{fd::AsRawFd, unix::fs::MetadataExt},
    };

    use std::fs;

    use super::*;
    use crate::host::procfs::socket_inode;

    /// This process's own listening socket is found through /proc.
    #[test]
    fn finds_the_holder_of_an_inode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let inode = socket_inode(link.as_os_str().as_encoded_bytes()).unwrap();
        let stat = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        assert_eq!(stat.ino(), inode);
        let wanted: FxHashSet<u64> = [inode, u64::MAX].into_iter().collect();
        let found = holders(&wanted);
        assert_eq!(found.get(&inode), Some(&std::process::id()));
        assert_eq!(found.len(), 1);

        let containers = Containers::new(crate::host::containers::Sources::default());
        let resolved = resolve(
            &[
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
            ],
            &containers,
        );
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
