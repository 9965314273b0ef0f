//! Which label a socket's metrics carry: its role and service port, through
//! a cardinality policy that keeps the number of series bounded.
//!
//! With `--port`, exactly those ports have a label, always. Otherwise each
//! role has a budget of `--max-ports` labels, and a port must earn one:
//!
//! - a server port when a socket of it is tracked in the server role: a
//!   listener, or a connection a listener of the port accepted;
//! - a client's remote port (below the ephemeral range) when a connection
//!   to it reaches ESTABLISHED. A SYN that is refused, reset or never
//!   answered earns nothing, so a port scan adds no label.
//!
//! A socket in SYN_SENT to a port without a label is counted under `other`;
//! when it reaches ESTABLISHED it moves to the port's label (claiming one if
//! there is room). The move is one [`crate::track::Change`] whose `left`
//! stay, SYN_SENT and its duration, stays with `other` where it was counted
//! (`left_port`), while the transition to ESTABLISHED and everything after
//! it count under the port: every gauge stays the sum of the sockets that
//! carry its label at that moment. A listener that started while the server
//! budget was full is counted under `other` until a connection it accepts
//! (or another listener of its port) finds room and claims the port's
//! label; it then moves there too, its LISTEN gauge with it (a change with
//! no transition, and no duration observed). Those are the only moves: any
//! other socket that gets `other` because the budget is full keeps it for
//! life.
//!
//! A label nobody uses ages out: once no tracked socket carries it and no
//! counter of it moved for `--port-label-idle`, its slot is free again and
//! its series are removed (the tracker reports it in
//! [`crate::track::Tracker::take_freed_labels`]). Recently ended sockets,
//! which the tracker keeps a few seconds for the errors the kernel reports
//! after the end, pin the label without keeping it busy: it is freed once
//! the idle time has passed and the last of them is gone, so that a late
//! signal never lands in a freed slot, nor in one given to another port.
//! A freed label that comes back starts its counters from zero, which
//! Prometheus reads as a counter reset.

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    time::Duration,
};

use rustc_hash::FxHashMap;

/// Which end of the connection this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Opened actively (connect): the service is the remote port.
    Client,
    /// Opened passively (accept) or listening: the service is the local port.
    Server,
}

impl Role {
    pub const ALL: [Self; 2] = [Self::Client, Self::Server];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// A service port, or `other` once the policy stops handing out labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortLabel {
    Port(u16),
    Other,
}

impl fmt::Display for PortLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port(port) => write!(f, "{port}"),
            Self::Other => f.write_str("other"),
        }
    }
}

/// Default of `--port-label-idle`.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);

/// One label handed out.
#[derive(Debug, Default)]
struct Slot {
    /// Tracked sockets carrying the label.
    sockets: u32,
    /// Ended sockets kept for their late signals that carry it.
    ended: u32,
    /// When the label was last busy: its last socket went, or a counter of
    /// it moved while no socket carried it (`CLOCK_BOOTTIME`).
    busy_ns: u64,
}

/// The labels of one role.
#[derive(Debug, Default)]
struct Budget {
    slots: FxHashMap<u16, Slot>,
    /// Sockets that got `other` because the budget was spent.
    overflows: u64,
    /// The budget was full when last asked, and that was logged.
    full: bool,
}

/// The cardinality policy (see the module documentation).
#[derive(Debug)]
pub struct PortPolicy {
    explicit: Option<HashSet<u16>>,
    ephemeral_low: u16,
    max_per_role: usize,
    /// `None`: labels never age out.
    idle_ns: Option<u64>,
    budgets: [Budget; 2],
    /// Labels no tracked socket carries, by when they were last busy.
    idle: BTreeSet<(u64, Role, u16)>,
}

impl PortPolicy {
    /// `idle` zero keeps every label for good.
    pub fn new(explicit: &[u16], ephemeral_low: u16, max_per_role: usize, idle: Duration) -> Self {
        Self {
            explicit: (!explicit.is_empty()).then(|| explicit.iter().copied().collect()),
            ephemeral_low,
            max_per_role,
            idle_ns: (!idle.is_zero()).then(|| u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX)),
            budgets: [Budget::default(), Budget::default()],
            idle: BTreeSet::new(),
        }
    }

    /// The label of a socket of `role` on service `port` that has earned
    /// one (see the module documentation): the port's, claimed now if
    /// needed and there is room, else `other`. A claimed label is idle
    /// from `now_ns` until a socket carrying it is [`PortPolicy::hold`]ed.
    pub fn claim(&mut self, role: Role, port: u16, now_ns: u64) -> PortLabel {
        if self.explicit.is_some() {
            return self.existing(role, port);
        }
        if role == Role::Client && port >= self.ephemeral_low || self.max_per_role == 0 {
            return PortLabel::Other;
        }
        let budget = &mut self.budgets[role as usize];
        if budget.slots.contains_key(&port) {
            return PortLabel::Port(port);
        }
        if budget.slots.len() >= self.max_per_role {
            budget.overflows += 1;
            if !budget.full {
                budget.full = true;
                let until = if self.idle_ns.is_some() {
                    "until a label has been idle for --port-label-idle"
                } else {
                    "for good (--port-label-idle 0)"
                };
                tracing::warn!(
                    role = role.name(),
                    max_ports = self.max_per_role,
                    "all {} {} port labels are in use: sockets of other {} ports are counted \
                     as port=\"other\" {until}",
                    self.max_per_role,
                    role.name(),
                    role.name(),
                );
            }
            return PortLabel::Other;
        }
        budget.slots.insert(
            port,
            Slot {
                busy_ns: now_ns,
                ..Slot::default()
            },
        );
        self.idle.insert((now_ns, role, port));
        PortLabel::Port(port)
    }

    /// The label `port` already has for `role`, or `other`: for what must
    /// not claim one, such as a SYN not yet answered or a reset to a closed
    /// port, which a port scan would otherwise turn into thousands of series.
    pub fn existing(&self, role: Role, port: u16) -> PortLabel {
        let labelled = match &self.explicit {
            Some(explicit) => explicit.contains(&port),
            None => self.budgets[role as usize].slots.contains_key(&port),
        };
        if labelled {
            PortLabel::Port(port)
        } else {
            PortLabel::Other
        }
    }

    /// A tracked socket now carries `label`.
    pub fn hold(&mut self, role: Role, label: PortLabel) {
        let Some((port, slot)) = self.slot(role, label) else {
            return;
        };
        slot.sockets += 1;
        if slot.sockets == 1 {
            let busy_ns = slot.busy_ns;
            self.idle.remove(&(busy_ns, role, port));
        }
    }

    /// A tracked socket carrying `label` is gone (or moved), at `now_ns`.
    pub fn release(&mut self, role: Role, label: PortLabel, now_ns: u64) {
        let Some((port, slot)) = self.slot(role, label) else {
            return;
        };
        debug_assert!(
            slot.sockets > 0,
            "{} {port} released more than held",
            role.name()
        );
        slot.sockets = slot.sockets.saturating_sub(1);
        if slot.sockets == 0 {
            slot.busy_ns = slot.busy_ns.max(now_ns);
            let busy_ns = slot.busy_ns;
            self.idle.insert((busy_ns, role, port));
        }
    }

    /// An ended socket kept for its late signals carries `label`
    /// (`pinned`), or no longer does.
    pub fn pin(&mut self, role: Role, label: PortLabel, pinned: bool) {
        if let Some((_, slot)) = self.slot(role, label) {
            if pinned {
                slot.ended += 1;
            } else {
                slot.ended = slot.ended.saturating_sub(1);
            }
        }
    }

    /// A counter of `label` moved at `now_ns`, perhaps with no socket
    /// carrying it (a late signal, a reset to the port, a failed call).
    pub fn touch(&mut self, role: Role, label: PortLabel, now_ns: u64) {
        let Some((port, slot)) = self.slot(role, label) else {
            return;
        };
        if slot.sockets > 0 || slot.busy_ns >= now_ns {
            return;
        }
        let before = slot.busy_ns;
        slot.busy_ns = now_ns;
        self.idle.remove(&(before, role, port));
        self.idle.insert((now_ns, role, port));
    }

    /// Frees the labels idle for the idle time as of `now_ns` that no ended
    /// socket pins; returns them, so that their series can go.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(Role, u16)> {
        let Some(idle_ns) = self.idle_ns else {
            return Vec::new();
        };
        let Some(cutoff) = now_ns.checked_sub(idle_ns) else {
            return Vec::new();
        };
        let due: Vec<(u64, Role, u16)> = self
            .idle
            .range(..=(cutoff, Role::Server, u16::MAX))
            .copied()
            .collect();
        let mut freed = Vec::new();
        for key @ (_, role, port) in due {
            let budget = &mut self.budgets[role as usize];
            if budget.slots.get(&port).is_some_and(|slot| slot.ended == 0) {
                budget.slots.remove(&port);
                budget.full = false;
                self.idle.remove(&key);
                freed.push((role, port));
            }
        }
        freed
    }

    /// Labels in use by `role` now (with `--port`, the ports it names).
    pub fn in_use(&self, role: Role) -> usize {
        match &self.explicit {
            Some(explicit) => explicit.len(),
            None => self.budgets[role as usize].slots.len(),
        }
    }

    /// Sockets of `role` that got `other` because its budget was spent.
    pub fn overflows(&self, role: Role) -> u64 {
        self.budgets[role as usize].overflows
    }

    fn slot(&mut self, role: Role, label: PortLabel) -> Option<(u16, &mut Slot)> {
        let PortLabel::Port(port) = label else {
            return None;
        };
        self.budgets[role as usize]
            .slots
            .get_mut(&port)
            .map(|slot| (port, slot))
    }
}

/// The low end of `net.ipv4.ip_local_port_range` (the kernel's default if
/// it cannot be read).
pub fn ephemeral_port_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_ascii_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests;
