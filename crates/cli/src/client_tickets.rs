//! The load generator's TLS session store: many tickets per server, so that `bench` measures
//! the handshake it asks for (resumed or full) rather than a mixture.
//!
//! Why not rustls' `ClientSessionMemoryCache`: it keeps at most 8 TLS 1.3 tickets per server.
//! A load generator that opens `--connections` connections to one server at once draws tickets
//! faster than that in bursts, and every connection that finds the cache empty does a full
//! handshake. How many do depends on how the *server* batches its replies (a server that finishes
//! more handshakes per wake-up causes bigger bursts), which made the resumed/full mixture differ
//! between the servers under test. With room for [`ClientTickets::PER_SERVER`] tickets, each
//! connection after the first `--connections` resumes, like a population of clients that each
//! resume their own earlier session.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use quicshard::rustls;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// TLS 1.3 tickets and key-exchange hints per server name (TLS 1.2 is not offered).
#[derive(Default)]
pub(crate) struct ClientTickets {
    servers: Mutex<HashMap<ServerName<'static>, Server>>,
}

#[derive(Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    /// Oldest first; at most [`ClientTickets::PER_SERVER`].
    tickets: VecDeque<Tls13ClientSessionValue>,
}

impl ClientTickets {
    /// Tickets kept per server. Why: above any `--connections` a run uses in practice, and a
    /// bound (tickets are ~200 bytes; the oldest go first).
    pub(crate) const PER_SERVER: usize = 4096;

    fn with<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Server) -> T) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        f(servers.entry(name.to_owned()).or_default())
    }
}

impl std::fmt::Debug for ClientTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tickets are secrets
        f.debug_struct("ClientTickets").finish_non_exhaustive()
    }
}

impl ClientSessionStore for ClientTickets {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(&name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(&name, |s| {
            if s.tickets.len() == Self::PER_SERVER {
                s.tickets.pop_front();
            }
            s.tickets.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // the newest, as rustls' own cache
        self.with(name, |s| s.tickets.pop_back())
    }
}
