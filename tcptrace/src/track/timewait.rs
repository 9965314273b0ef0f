//! TIME_WAIT, which no state event reports: a timewait socket's timer
//! being armed starts it (or an orphaned FIN_WAIT2), its expiry or a kill
//! ends it.

use super::{Change, Stay, Tracker};
use crate::events::{SocketEvent, TcpState};

impl Tracker {
    pub(super) fn timewait_armed(
        &mut self,
        event: &SocketEvent,
        substate: TcpState,
        sink: &mut impl FnMut(&Change),
    ) {
        let entered = Stay {
            state: substate,
            since_ns: event.ts_ns,
            known: true,
        };
        let Some(socket) = self.sockets.get_mut(&event.cookie) else {
            // A timewait socket whose history was missed: track it from now,
            // without a duration to observe.
            let role = self.role_of(event.endpoints.netns, event.endpoints.sport);
            let port = self.label_in(role, substate, &event.endpoints);
            let stay = Stay {
                known: false,
                ..entered
            };
            self.insert(event, stay, role, port, true, sink);
            sink(&Change::discovered(*event, (role, port), stay));
            return;
        };
        socket.timewait = true;
        socket.cancel = None;
        if socket.stay.state == substate {
            return; // re-armed, or an orphan staying in FIN_WAIT2
        }
        let left = socket.stay;
        // A client whose ESTABLISHED was missed earns its label here.
        let left_port = self.earn(event.cookie, left.state, substate);
        let Some(socket) = self.sockets.get_mut(&event.cookie) else {
            return;
        };
        socket.stay = entered;
        sink(&Change {
            left_port,
            ..Change::transition(
                *event,
                (socket.role, socket.port),
                (left.state, substate),
                Some(left),
                Some(entered),
            )
        });
    }

    pub(super) fn timewait_ended(
        &mut self,
        event: &SocketEvent,
        killed: bool,
        sink: &mut impl FnMut(&Change),
    ) {
        let Some(socket) = self.remove(event, true) else {
            return;
        };
        sink(&Change {
            killed,
            ..Change::transition(
                *event,
                (socket.role, socket.port),
                (socket.stay.state, TcpState::Close),
                Some(socket.stay),
                None,
            )
        });
    }
}
