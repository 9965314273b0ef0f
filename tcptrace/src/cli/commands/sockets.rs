//! `tcptrace sockets`: the tracked sockets and their owners, from a running
//! daemon, or read from the kernel once when none runs.

use std::{
    collections::HashSet,
    io::{self, Write},
    net::SocketAddr,
};

use crate::{
    aggregate::owners::{self, Wanted},
    cli::commands::Error,
    cli::{ReportFormat, SocketsArgs},
    events::{TIME_WAIT_LEN, TcpState},
    export::api::{
        OwnerKind, PORTS_PATH, PortInNamespace, PortView, SOCKETS_PATH, SocketList, SocketQuery,
        SocketRecord,
    },
    export::client::{self, ClientError},
    export::overview,
    host::containers::{Containers, Sources},
    host::netns,
    host::sock_diag::{self, DiagSocket},
    support::duration::short_age,
    track::holders::PortHolders,
};

pub async fn run(args: SocketsArgs) -> Result<(), Error> {
    let daemon = super::daemon(&args.client)?;
    let query = SocketQuery {
        states: args.states.clone(),
        min_age: args.min_age.unwrap_or_default(),
        ports: args.ports.clone(),
        stale: args.stale,
        limit: args.limit,
    };
    let path = format!("{SOCKETS_PATH}?{}", query.to_query());
    // Only when nothing answers: a daemon that refuses is an error.
    let (list, summaries) = match client::get_json::<SocketList>(&daemon, &path).await {
        Ok(list) => {
            let mut summaries = Vec::new();
            for port in &args.ports {
                let path = format!("{PORTS_PATH}{port}");
                let view = client::get_json::<PortView>(&daemon, &path).await?;
                summaries.extend(summary_lines(&view));
            }
            (list, summaries)
        }
        Err(ClientError::Unreachable {
            url: address,
            source,
        }) => {
            if args.stale {
                return Err(Error::Usage(format!(
                    "--stale needs the daemon's ages, and no daemon answers at {address} ({source})"
                )));
            }
            tracing::warn!(
                "no daemon at {address} ({source}): read the kernel once instead; ages are unknown except for TIME_WAIT{}",
                if query.min_age.is_zero() {
                    ""
                } else {
                    ", so --min-age applies to TIME_WAIT only"
                }
            );
            tokio::task::spawn_blocking(move || from_kernel(&query))
                .await
                .map_err(io::Error::other)?
        }
        Err(other) => return Err(Error::Client(other)),
    };
    let mut out = io::stdout().lock();
    let written = if args.json || args.format == ReportFormat::Json {
        serde_json::to_writer_pretty(&mut out, &list)
            .map_err(io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        summaries
            .iter()
            .try_for_each(|line| writeln!(out, "{line}"))
            .and_then(|()| write_table(&mut out, &list))
    };
    match written {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// One line per namespace on what holds the port: the `--port` summary.
fn summary_lines(view: &PortView) -> Vec<String> {
    if view.namespaces.is_empty() {
        return vec![format!(":{}: no socket on the port", view.port)];
    }
    view.namespaces
        .iter()
        .map(|namespace| {
            format!(
                ":{} in netns {}: {}",
                view.port, namespace.netns, namespace.summary
            )
        })
        .collect()
}

/// What holds local `port` in each namespace of a kernel dump: the states,
/// the listeners (unnamed: the list below names their owners) and when the
/// last TIME_WAIT socket ends.
fn kernel_port_view(dump: &[DiagSocket], port: u16) -> PortView {
    let mut namespaces: Vec<u32> = dump
        .iter()
        .filter(|s| s.sport == port)
        .map(|s| s.netns)
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let namespaces = namespaces
        .into_iter()
        .map(|netns| {
            let on_port = || {
                dump.iter()
                    .filter(move |s| s.netns == netns && s.sport == port)
            };
            let mut holders = PortHolders::default();
            for state in TcpState::ALL {
                let count = on_port().filter(|s| s.state == state as u8).count();
                if count > 0 {
                    holders.states.push((state, count));
                }
            }
            holders.listeners = vec![None; holders.count(TcpState::Listen)];
            holders.time_wait_ends_in = on_port()
                .filter_map(DiagSocket::time_in_time_wait)
                .min()
                .map(|age| TIME_WAIT_LEN.saturating_sub(age));
            PortInNamespace {
                netns,
                summary: holders.describe(),
                sockets: holders
                    .states
                    .iter()
                    .map(|&(state, count)| (state.name().to_owned(), count))
                    .collect(),
                listeners: Vec::new(),
                time_wait_ends_in_seconds: holders.time_wait_ends_in.map(|d| d.as_secs_f64()),
                last_failure: None,
            }
        })
        .collect();
    PortView { port, namespaces }
}

/// The sockets of every namespace as the kernel has them now, with owners;
/// ages only for TIME_WAIT (its timer's remaining time tells). With a port,
/// the summary of what holds it.
fn from_kernel(query: &SocketQuery) -> (SocketList, Vec<String>) {
    let (dump, failures) = sock_diag::dump_all();
    for (namespace, error) in failures {
        tracing::warn!(path = %namespace.path.display(), %error, "namespace skipped");
    }
    let summaries = query
        .ports
        .iter()
        .flat_map(|&port| summary_lines(&kernel_port_view(&dump, port)))
        .collect();
    let listening: HashSet<(u32, u16)> = dump
        .iter()
        .filter(|s| s.state == TcpState::Listen as u8)
        .map(|s| (s.netns, s.sport))
        .collect();
    let mut records: Vec<(SocketRecord, u64)> = dump
        .iter()
        .filter_map(|socket| {
            let record = kernel_record(socket, &listening)?;
            let label = record.port.clone();
            let state: TcpState = record.state.parse().ok()?;
            let old_enough = record
                .age_seconds
                .is_none_or(|age| age >= query.min_age.as_secs_f64());
            (query.selects(state, [socket.sport, socket.dport], &label) && old_enough)
                .then_some((record, socket.inode))
        })
        .collect();
    let wanted: Vec<Wanted> = records
        .iter()
        .map(|(record, inode)| Wanted {
            cookie: record.cookie,
            inode: *inode,
            task: None,
        })
        .collect();
    let containers = Containers::new(Sources::default());
    let names = netns::names();
    for ((record, _), (_, owner)) in records
        .iter_mut()
        .zip(owners::resolve(&wanted, &containers))
    {
        overview::set_owner(record, owner.as_ref());
        record.netns_name = names.get(&record.netns).cloned();
    }
    let mut sockets: Vec<SocketRecord> = records.into_iter().map(|(record, _)| record).collect();
    // Known ages first, oldest first.
    sockets.sort_by(|a, b| {
        b.age_seconds
            .unwrap_or(-1.0)
            .total_cmp(&a.age_seconds.unwrap_or(-1.0))
    });
    let total = sockets.len();
    sockets.truncate(query.limit);
    (SocketList { sockets, total }, summaries)
}

fn kernel_record(socket: &DiagSocket, listening: &HashSet<(u32, u16)>) -> Option<SocketRecord> {
    let state = TcpState::from_kernel(socket.state)?;
    let server = state == TcpState::Listen || listening.contains(&(socket.netns, socket.sport));
    let age_seconds = socket.time_in_time_wait().map(|age| age.as_secs_f64());
    let role = if server { "server" } else { "client" };
    let port = if server { socket.sport } else { socket.dport }.to_string();
    Some(SocketRecord {
        age_exact: age_seconds.is_some(),
        age_seconds,
        ..SocketRecord::at(
            socket.cookie,
            state.name(),
            (role, port),
            (
                SocketAddr::new(socket.saddr, socket.sport),
                SocketAddr::new(socket.daddr, socket.dport),
            ),
            socket.netns,
        )
    })
}

/// A pod's container as `namespace/pod/container`, another container by
/// its name (else its id's first 12 digits); "-" outside containers.
fn container_column(socket: &SocketRecord) -> String {
    let container = socket.container.as_ref().map(|container| {
        container
            .name
            .clone()
            .unwrap_or_else(|| container.id.chars().take(12).collect())
    });
    match (&socket.pod, container) {
        (Some(pod), container) => {
            let or_unknown = |name: &Option<String>| name.as_deref().unwrap_or("?").to_owned();
            let in_pod = pod.container.clone().or(container);
            format!(
                "{}/{}/{}",
                or_unknown(&pod.namespace),
                or_unknown(&pod.name),
                or_unknown(&in_pod)
            )
        }
        (None, Some(container)) => container,
        (None, None) => "-".to_owned(),
    }
}

fn write_table(out: &mut impl Write, list: &SocketList) -> io::Result<()> {
    const HEADER: [&str; 12] = [
        "STATE",
        "AGE",
        "ROLE",
        "PORT",
        "LOCAL",
        "REMOTE",
        "NETNS",
        "PID",
        "OWNER",
        "COMM",
        "CONTAINER",
        "CGROUP",
    ];
    let rows: Vec<[String; 12]> = list
        .sockets
        .iter()
        .map(|s| {
            // ">" for a socket found already in its state: at least that old.
            let age = s.age_seconds.map_or_else(
                || "?".to_owned(),
                |age| format!("{}{}", if s.age_exact { "" } else { ">" }, short_age(age)),
            );
            let owner = match s.owner {
                Some(OwnerKind::Fd) => "fd",
                Some(OwnerKind::Task) => "task",
                None => "?",
            };
            let or_unknown = |value: &Option<String>| value.clone().unwrap_or_else(|| "?".into());
            [
                s.state.clone(),
                age,
                s.role.clone(),
                s.port.clone(),
                s.local.to_string(),
                s.remote.to_string(),
                // Names are one word: `comm[pid]` with its spaces joined.
                s.netns_name.as_ref().map_or_else(
                    || s.netns.to_string(),
                    |name| name.split_whitespace().collect::<Vec<_>>().join("_"),
                ),
                s.pid.map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
                owner.to_owned(),
                or_unknown(&s.comm),
                container_column(s),
                or_unknown(&s.cgroup),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> io::Result<()> {
        let final_column = cells.len() - 1;
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i == final_column {
                writeln!(out, "{cell}")?;
            } else {
                write!(out, "{cell:width$}  ")?;
            }
        }
        Ok(())
    };
    line(out, &HEADER)?;
    for row in &rows {
        line(out, &row.each_ref().map(String::as_str))?;
    }
    if list.total > list.sockets.len() {
        writeln!(
            out,
            "({} of {} sockets shown; raise --limit)",
            list.sockets.len(),
            list.total
        )?;
    }
    Ok(())
}
