//! [`AppConn`]: the app side's reference on one connection, shared by its
//! [`Connection`](super::Connection) clones and its stream handles (a stream keeps its
//! connection open).

use std::sync::{Arc, Weak};

use super::blocking::Opts;
use super::bridge::Shards;
use super::conn_shared::ConnShared;

/// The app's reference on a connection: when the last one drops, the connection closes once
/// everything sent is acknowledged.
pub(crate) struct AppConn {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) opts: Opts,
    /// Where queries post to the connection's shard. Weak: a handle must not keep the engine's
    /// mailboxes alive.
    pub(crate) shards: Weak<Shards>,
}

impl Drop for AppConn {
    fn drop(&mut self) {
        if !self.shared.is_lost() {
            self.shared.linger();
        }
    }
}
