//! The engine's lock order: the [`Rank`] of every mutex, outermost first. A thread may only take
//! a lock whose level is higher than every lock it holds; `ranked_lock` checks it on every
//! acquisition, in release builds too, and panics naming both locks. Gaps between levels leave
//! room for new locks.
//!
//! Who nests what: the direct driver's core is held for a whole turn, while shard code touches
//! the handle objects (accept queue, connection, slot, pipe), which may queue themselves for the
//! shard (ready queue) or wake a poller (ready list) or a thread (signal) before unlocking; a
//! memory link's queue and the driver's published state are leaves.

//!
//! One mutex is outside the order on purpose: a spawned shard's turn lock (`shard/help.rs`),
//! held around a whole turn (so every lock above nests inside it) and taken only at the top of
//! a shard thread's loop with nothing else held.

#![allow(unexpected_cfgs)] // cfg(loom): see handle/sync.rs

use ranked_lock::Rank;

/// The direct driver's gate (busy flag, waiting threads).
pub(crate) const DIRECT_GATE: Rank = Rank::new(2, "direct driver gate");
/// The direct driver's shards, held for a whole turn.
pub(crate) const DIRECT_CORE: Rank = Rank::new(4, "direct driver core");
/// A handle-mode engine's accept queue.
pub(crate) const HUB_ACCEPT: Rank = Rank::new(10, "hub accept queue");
/// One connection's shared state (stream queues, datagrams, close).
pub(crate) const CONN: Rank = Rank::new(12, "connection state");
/// A one-shot answer from a shard.
pub(crate) const SLOT: Rank = Rank::new(14, "one-shot slot");
/// One stream direction's pipe.
pub(crate) const PIPE: Rank = Rank::new(16, "stream pipe");
/// A shard's queue of objects waiting for service.
pub(crate) const SHARD_QUEUE: Rank = Rank::new(20, "shard ready queue");
/// One part of the shared session-ticket store (taken inside rustls, under no other lock).
pub(crate) const TICKETS: Rank = Rank::new(22, "ticket store part");
/// The stateless ticketer's current keys (taken inside rustls, under no other lock).
pub(crate) const TICKET_KEYS: Rank = Rank::new(23, "ticket keys");
/// A poller's list of ready registrations.
pub(crate) const POLLER: Rank = Rank::new(24, "poller ready list");
/// A blocked thread's wake-up flag.
pub(crate) const SIGNAL: Rank = Rank::new(30, "thread signal");
/// One direction of an in-memory link.
pub(crate) const MEM_LINK: Rank = Rank::new(40, "memory link queue");
/// A retiring process's socket to its successor ([`crate::handover`]).
pub(crate) const HANDOVER_FORWARD: Rank = Rank::new(45, "handover forward socket");
/// A process's delivery of what its successor sends back, taken once ([`crate::handover`]).
pub(crate) const HANDOVER_INJECT: Rank = Rank::new(46, "handover inject");
/// A handover's descriptors to shut down when the engine stops (a leaf).
pub(crate) const HANDOVER_OPEN: Rank = Rank::new(47, "handover descriptors");
/// What the direct driver publishes after a turn (deadline, turn count).
pub(crate) const DIRECT_ASSIST: Rank = Rank::new(50, "direct driver assist state");
/// The loom model's mailbox (tests only).
#[cfg(loom)]
pub(crate) const MODEL_MAILBOX: Rank = Rank::new(60, "model mailbox");
