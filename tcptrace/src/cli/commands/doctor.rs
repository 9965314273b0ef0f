//! `tcptrace doctor`: finds out what tcptrace can do on this host, by trying
//! it, and prints the report that [`crate::doctor`] judges from it.

use std::{
    cmp::Reverse,
    collections::{HashMap, HashSet},
    fs,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::{
    aggregate::idle::{KeepaliveSetBy, keepalive_idle},
    cli::commands::Error,
    cli::{DoctorArgs, ReportFormat},
    doctor::{self, BtfFacts, Findings, NamespaceContents, NamespaceFacts, Verdict},
    events::TcpState,
    host::containers,
    host::netns::{self, Namespace},
    host::sock_diag::{self, DiagError, DiagSocket},
    host::sysctls,
    kernel::capabilities::Capabilities,
    kernel::kallsyms,
    kernel::probes::{Hook, ProbeConfig, ProbeSpec, Probes},
    kernel::settings::{self, SettingsLink},
    support::errors::one_line,
};

pub fn run(args: &DoctorArgs) -> Result<Verdict, Error> {
    let report = doctor::assess(&gather(&args.probe.config(), &args.containers.sources()));
    let mut out = io::stdout().lock();
    let written = match args.format {
        ReportFormat::Text => report.write_text(&mut out),
        ReportFormat::Json => serde_json::to_writer_pretty(&mut out, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out)),
    }
    .and_then(|()| out.flush());
    match written {
        // The reader went away (`| head`): the verdict still stands.
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(Error::Io(error)),
        _ => Ok(report.verdict),
    }
}

/// Looks at everything tcptrace needs; blocking, and it loads and attaches
/// the BPF programs for a moment.
pub fn gather(config: &ProbeConfig, sources: &containers::Sources) -> Findings {
    // The BTF is read and resolved once, for the facts and for loading.
    let spec = ProbeSpec::resolve(config).map_err(|e| one_line(&e));
    let btf = spec.as_ref().map(btf_facts).map_err(Clone::clone);
    // Measured apart from loading, which needs privileges it does not.
    let tick_rate = spec
        .as_ref()
        .map_err(Clone::clone)
        .and_then(ProbeSpec::tick_rate);
    // Loaded as `run` would, and kept while the namespaces are read, for the
    // sockets' own settings; dropping them detaches everything.
    let mut probes = spec.and_then(|spec| spec.load_measured(&tick_rate).map_err(|e| one_line(&e)));
    let hooks = probes.as_ref().map(hook_outcomes).map_err(Clone::clone);
    let found = netns::namespaces();
    let links = probes
        .as_mut()
        .map(|probes| probes.settings_links(found.len()))
        .unwrap_or_default();
    let (namespaces, namespaces_without_sockets) =
        namespaces(found, links, tick_rate.as_ref().ok().copied());
    drop(probes);
    Findings {
        kernel_release: crate::kernel::version::release(),
        btf_path: config.btf_path.clone(),
        btf,
        capabilities: Capabilities::effective(),
        kernel_addresses: kallsyms::addresses_visible(Path::new("/proc/kallsyms")),
        hooks,
        tick_rate,
        tracefs: tracefs_mounts(),
        namespaces,
        namespaces_without_sockets,
        emulated_cpus: fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|cpuinfo| doctor::emulated_cpus(&cpuinfo)),
        containers: containers::find_sources(sources),
    }
}

fn btf_facts(spec: &ProbeSpec) -> BtfFacts {
    BtfFacts {
        send_reset_has_reason: spec.layout().send_reset_has_reason != 0,
        reset_reason_names: spec.reset_reasons().len(),
    }
}

/// Which hooks took, and why each other one did not.
fn hook_outcomes(probes: &Probes) -> Vec<(&'static Hook, Option<String>)> {
    probes
        .attached()
        .iter()
        .map(|&(hook, attached)| {
            let why = (!attached).then(|| {
                probes
                    .why_not_attached(hook.program)
                    .unwrap_or("the kernel refused it")
                    .to_owned()
            });
            (hook, why)
        })
        .collect()
}

/// Mount points of tracefs, from the mount table.
fn tracefs_mounts() -> Vec<PathBuf> {
    let table = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "tracefs").then(|| PathBuf::from(target))
        })
        .collect()
}

/// The destination whose client sockets (those not on a listening port)
/// hold the most local ports, and how many: each connection from one local
/// address to one remote address and port needs a local port of its own.
fn busiest_destination(sockets: &[DiagSocket]) -> Option<(SocketAddr, usize)> {
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen as u8)
        .map(|s| s.sport)
        .collect();
    let mut counts: HashMap<(IpAddr, IpAddr, u16), usize> = HashMap::new();
    for socket in sockets {
        if socket.state != TcpState::Listen as u8 && !listening.contains(&socket.sport) {
            *counts
                .entry((socket.saddr, socket.daddr, socket.dport))
                .or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, count)| count)
        .map(|((_, daddr, dport), count)| (SocketAddr::new(daddr, dport), count))
}

/// The established connections with keepalive on (a pending keepalive
/// timer) whose own `TCP_KEEPIDLE` is above what NATs allow: how many, and
/// the longest in seconds.
fn own_keepalive_over(
    sockets: &[DiagSocket],
    own: &HashMap<u64, u32>,
    hz: Option<u32>,
) -> (usize, u64) {
    let over: Vec<u64> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Established as u8 && s.timer == sock_diag::TIMER_KEEPALIVE)
        .filter_map(|s| keepalive_idle(Some(*own.get(&s.cookie)?), None, hz?))
        .filter(|idle| idle.set_by == KeepaliveSetBy::Socket)
        .map(|idle| idle.seconds)
        .filter(|&seconds| seconds > doctor::notes::NAT_IDLE_TIMEOUT_SECS)
        .collect();
    (over.len(), over.iter().copied().max().unwrap_or(0))
}

/// Of `found`: tcptrace's own namespace and every other one with TCP
/// sockets (the most first), then those that could not be entered; and how
/// many hold no TCP socket. Each is entered once, for its sockets and its
/// settings together (a link of `links` each).
fn namespaces(
    found: Vec<Namespace>,
    mut links: Vec<SettingsLink>,
    hz: Option<u32>,
) -> (Vec<NamespaceFacts>, usize) {
    let host = netns::own_inode();
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    let mut without_sockets = 0;
    for namespace in found {
        let is_host = Some(namespace.inode) == host;
        let link = links.pop();
        let entered: Result<_, DiagError> = netns::in_namespace(&namespace, || {
            let sockets = sock_diag::dump_current()?;
            let own = link.and_then(|link| settings::read(link).ok());
            Ok((
                sockets.len(),
                busiest_destination(&sockets),
                sysctls::read_current(),
                own.map(|own| own_keepalive_over(&sockets, &own, hz)),
            ))
        });
        let contents = match entered {
            Ok((0, ..)) if !is_host => {
                without_sockets += 1;
                continue;
            }
            Ok((tcp_sockets, busiest_destination, settings, own_keepalive_over)) => {
                Ok(NamespaceContents {
                    tcp_sockets,
                    settings,
                    busiest_destination,
                    own_keepalive_over,
                })
            }
            Err(error) if error.vanished() => continue,
            Err(error) => Err(one_line(&error)),
        };
        let facts = NamespaceFacts {
            inode: namespace.inode,
            host: is_host,
            holder: if is_host {
                "tcptrace's own".to_owned()
            } else {
                holder(&namespace.path)
            },
            contents,
        };
        if facts.contents.is_ok() {
            read.push(facts);
        } else {
            unreadable.push(facts);
        }
    }
    read.sort_by_key(|ns| {
        let sockets = ns.contents.as_ref().map_or(0, |c| c.tcp_sockets);
        (!ns.host, Reverse(sockets))
    });
    read.append(&mut unreadable);
    (read, without_sockets)
}

/// `nginx, pid 812` for `/proc/812/task/…/ns/net`; other paths as they are.
fn holder(path: &Path) -> String {
    let pid = path
        .strip_prefix("/proc")
        .ok()
        .and_then(|rest| rest.iter().next())
        .and_then(|pid| pid.to_str())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()));
    match pid {
        Some(pid) => match fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(comm) => format!("{}, pid {pid}", comm.trim()),
            Err(_) => format!("pid {pid}"),
        },
        None => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_name_the_process() {
        let own = std::process::id();
        let comm = fs::read_to_string("/proc/self/comm").expect("procfs");
        assert_eq!(
            holder(Path::new(&format!("/proc/{own}/task/{own}/ns/net"))),
            format!("{}, pid {own}", comm.trim())
        );
        assert_eq!(holder(Path::new("/run/netns/blue")), "/run/netns/blue");
        assert_eq!(holder(Path::new("/proc/self/ns/net")), "/proc/self/ns/net");
    }
}
