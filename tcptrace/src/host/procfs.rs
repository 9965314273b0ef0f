//! Processes as `/proc` describes them, and the holders of socket inodes,
//! found the way `ss -p` does: through `/proc/<pid>/fd`.

use std::fs;

use rustc_hash::FxHashMap;

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

/// The cgroup path of a process (see [`Process::cgroup`]); `None` once it
/// has exited.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(cgroup_path(&text))
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
) -> FxHashMap<u64, u32> {
    let mut found = FxHashMap::default();
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
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
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
}
