//! Which label a socket's metrics carry: its role and service port, through
//! a cardinality policy that keeps the number of series bounded.

use std::{collections::HashSet, fmt};

/// Which end of the connection this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Opened actively (connect): the service is the remote port.
    Client,
    /// Opened passively (accept) or listening: the service is the local port.
    Server,
}

impl Role {
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

/// The cardinality policy.
///
/// With explicit ports, exactly those get a label. Otherwise a server port
/// (one with a listener) and a client's remote port below the ephemeral range
/// get one, first come, up to `max_per_role` per role; all else is `other`.
/// Labels are never taken back, so a socket keeps its series for life.
#[derive(Debug)]
pub struct PortPolicy {
    explicit: Option<HashSet<u16>>,
    ephemeral_low: u16,
    max_per_role: usize,
    assigned: [HashSet<u16>; 2],
}

impl PortPolicy {
    pub fn new(explicit: &[u16], ephemeral_low: u16, max_per_role: usize) -> Self {
        Self {
            explicit: (!explicit.is_empty()).then(|| explicit.iter().copied().collect()),
            ephemeral_low,
            max_per_role,
            assigned: [HashSet::new(), HashSet::new()],
        }
    }

    /// The label of a socket of `role` whose service port is `port`.
    pub fn label(&mut self, role: Role, port: u16) -> PortLabel {
        if let Some(explicit) = &self.explicit {
            return if explicit.contains(&port) {
                PortLabel::Port(port)
            } else {
                PortLabel::Other
            };
        }
        if role == Role::Client && port >= self.ephemeral_low {
            return PortLabel::Other;
        }
        let assigned = &mut self.assigned[role as usize];
        if assigned.contains(&port) || (assigned.len() < self.max_per_role && assigned.insert(port))
        {
            PortLabel::Port(port)
        } else {
            PortLabel::Other
        }
    }
}

impl PortPolicy {
    /// The label `port` already has for `role`, or `other`: for ports that
    /// must not claim a label, like those of resets to closed ports, which a
    /// port scan would otherwise turn into thousands of series.
    pub fn existing(&self, role: Role, port: u16) -> PortLabel {
        let labelled = match &self.explicit {
            Some(explicit) => explicit.contains(&port),
            None => self.assigned[role as usize].contains(&port),
        };
        if labelled {
            PortLabel::Port(port)
        } else {
            PortLabel::Other
        }
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
mod tests {
    use super::*;

    #[test]
    fn explicit_ports_only() {
        let mut policy = PortPolicy::new(&[443, 8080], 32768, 1);
        assert_eq!(policy.label(Role::Server, 443), PortLabel::Port(443));
        assert_eq!(policy.label(Role::Client, 8080), PortLabel::Port(8080));
        assert_eq!(policy.label(Role::Server, 22), PortLabel::Other);
    }

    #[test]
    fn first_come_up_to_the_limit_per_role() {
        let mut policy = PortPolicy::new(&[], 32768, 2);
        assert_eq!(policy.label(Role::Server, 80), PortLabel::Port(80));
        assert_eq!(policy.label(Role::Server, 443), PortLabel::Port(443));
        assert_eq!(policy.label(Role::Server, 8080), PortLabel::Other);
        assert_eq!(policy.label(Role::Server, 80), PortLabel::Port(80), "kept");
        // The other role has its own budget.
        assert_eq!(policy.label(Role::Client, 5432), PortLabel::Port(5432));
    }

    /// `--max-ports 0`: no port gets a label of its own.
    #[test]
    fn a_limit_of_zero_labels_nothing() {
        let mut policy = PortPolicy::new(&[], 32768, 0);
        assert_eq!(policy.label(Role::Server, 80), PortLabel::Other);
        assert_eq!(policy.label(Role::Client, 443), PortLabel::Other);
    }

    #[test]
    fn ephemeral_client_ports_never_get_a_label() {
        let mut policy = PortPolicy::new(&[], 32768, 128);
        assert_eq!(policy.label(Role::Client, 40000), PortLabel::Other);
        // A server may listen in the ephemeral range.
        assert_eq!(policy.label(Role::Server, 40000), PortLabel::Port(40000));
    }

    #[test]
    fn thousands_of_ports_stay_bounded() {
        let mut policy = PortPolicy::new(&[], 60000, 128);
        let labels: HashSet<PortLabel> = (1..=2000)
            .map(|port| policy.label(Role::Client, port))
            .collect();
        assert_eq!(labels.len(), 129, "128 ports and other");
    }
}
