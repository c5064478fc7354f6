//! The shard's connection table: a slab of `quinn_proto::Connection`s indexed by the endpoint's
//! `ConnectionHandle`, with a generation per slot and the queue of connections needing service.
//!
//! quinn-proto's `Endpoint` allocates handles from its own slab, so a live handle is unique and is
//! used directly as our slot index. The generation makes a [`ConnId`] for a dead connection
//! resolve to `None` after its slot is reused. The dirty queue holds slots to drive (flush events,
//! transmit, re-arm the timer) in FIFO order, each at most once.

use std::collections::VecDeque;
use std::time::Instant;

use quinn_proto::Connection;

use super::amplify::AmpBudget;
use super::callback::ConnId;

/// One live connection and its loop bookkeeping.
pub(crate) struct Entry {
    pub(crate) conn: Connection,
    /// Which of the shard's sockets the connection sends on (`io::LISTEN` or `io::CLIENT`).
    pub(crate) sock: usize,
    /// The deadline currently armed in the timer heap.
    pub(crate) timer: Option<Instant>,
    /// Whether the slot is in the dirty queue.
    queued: bool,
    /// `Handler::on_closed` was called.
    pub(crate) closed_reported: bool,
    /// The endpoint has forgotten the connection; remove it after this drive.
    pub(crate) drained: bool,
    /// The peer closed the connection (CONNECTION_CLOSE received): it drains, and the shard
    /// sends nothing more on it (see `Shard::transmit`).
    pub(crate) peer_closed: bool,
    /// An accepted (server side) connection whose handshake has not completed.
    handshaking: bool,
    /// Its accepted 0-RTT was counted.
    pub(crate) zero_rtt_counted: bool,
    /// Bytes received from and sent to a not yet validated address (see `amplify`).
    pub(crate) amp: AmpBudget,
    /// When the connection was accepted or initiated (handshake time, close log).
    pub(crate) started: Instant,
}

struct Slot {
    gen: u32,
    entry: Option<Entry>,
}

/// The slab plus the dirty queue.
#[derive(Default)]
pub(crate) struct ConnTable {
    slots: Vec<Slot>,
    live: usize,
    /// Live entries with `handshaking` set.
    handshaking: usize,
    dirty: VecDeque<u32>,
    /// The generation new slots start from: above every generation of a slot [`Self::shrink`]
    /// dropped, so a stale `ConnId` never names a later connection.
    gen_floor: u32,
    /// The send window last given to every connection (0: none yet).
    send_window: u64,
}

impl ConnTable {
    /// Stores a new connection at `slot` (its `ConnectionHandle`) and queues it.
    pub(crate) fn insert(
        &mut self,
        slot: usize,
        conn: Connection,
        sock: usize,
        now: Instant,
    ) -> u32 {
        if self.slots.len() <= slot {
            let gen = self.gen_floor;
            self.slots
                .resize_with(slot + 1, || Slot { gen, entry: None });
        }
        let s = &mut self.slots[slot];
        debug_assert!(
            s.entry.is_none(),
            "endpoint reused a live connection handle"
        );
        s.gen = s.gen.wrapping_add(1);
        s.entry = Some(Entry {
            amp: AmpBudget::new(conn.side()),
            conn,
            sock,
            timer: None,
            queued: false,
            closed_reported: false,
            drained: false,
            peer_closed: false,
            handshaking: false,
            zero_rtt_counted: false,
            started: now,
        });
        self.live += 1;
        // slot < endpoint slab size, which is far below u32::MAX connections
        self.mark_dirty(slot as u32);
        s_gen(&self.slots[slot])
    }

    /// Removes a drained connection.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<Entry> {
        let e = self.slots.get_mut(slot as usize)?.entry.take();
        if let Some(e) = &e {
            self.live -= 1;
            if e.handshaking {
                self.handshaking -= 1;
            }
        }
        e
    }

    /// Counts `slot` (just accepted) as a handshake in progress until [`Self::handshake_done`]
    /// or its removal.
    pub(crate) fn start_handshake(&mut self, slot: u32) {
        if let Some(e) = self.get_mut(slot) {
            if !e.handshaking {
                e.handshaking = true;
                self.handshaking += 1;
            }
        }
    }

    /// The handshake of `slot` completed.
    pub(crate) fn handshake_done(&mut self, slot: u32) {
        if let Some(e) = self.get_mut(slot) {
            if e.handshaking {
                e.handshaking = false;
                self.handshaking -= 1;
            }
        }
    }

    /// Accepted connections whose handshake is in progress.
    pub(crate) fn handshaking(&self) -> usize {
        self.handshaking
    }

    /// The entry at `slot`, whatever its generation.
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    /// The entry at `slot` if its generation is `gen`.
    pub(crate) fn get_gen_mut(&mut self, slot: u32, gen: u32) -> Option<&mut Entry> {
        let s = self.slots.get_mut(slot as usize)?;
        if s.gen != gen {
            return None;
        }
        s.entry.as_mut()
    }

    /// The generation of `slot`.
    pub(crate) fn gen(&self, slot: u32) -> u32 {
        self.slots.get(slot as usize).map_or(0, s_gen)
    }

    /// Queues `slot` for a drive unless it is queued already or empty.
    pub(crate) fn mark_dirty(&mut self, slot: u32) {
        if let Some(e) = self.get_mut(slot) {
            if !e.queued {
                e.queued = true;
                self.dirty.push_back(slot);
            }
        }
    }

    /// The next slot to drive.
    pub(crate) fn pop_dirty(&mut self) -> Option<u32> {
        while let Some(slot) = self.dirty.pop_front() {
            if let Some(e) = self.get_mut(slot) {
                e.queued = false;
                return Some(slot);
            }
        }
        None
    }

    /// Whether any slot waits for a drive.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Gives every connection send window `w` if it differs from the last one given, and the
    /// connection at `new` (just inserted) `w` in any case (see `crate::memory`).
    pub(crate) fn fit_send_window(&mut self, w: u64, new: Option<u32>) {
        if w != self.send_window {
            self.send_window = w;
            for s in &mut self.slots {
                if let Some(e) = &mut s.entry {
                    e.conn.set_send_window(w);
                }
            }
        } else if let Some(e) = new.and_then(|slot| self.get_mut(slot)) {
            e.conn.set_send_window(w);
        }
    }

    /// Gives back the memory of empty slots at the end of the slab and of the queue's unused
    /// capacity (after a burst of connections closed).
    pub(crate) fn shrink(&mut self) {
        while let Some(s) = self.slots.last() {
            if s.entry.is_some() {
                break;
            }
            self.gen_floor = self.gen_floor.max(s.gen.wrapping_add(1));
            self.slots.pop();
        }
        self.slots.shrink_to_fit();
        self.dirty.shrink_to_fit();
    }

    /// Live connections.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Slots of live connections.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.entry.is_some())
            .map(|(i, _)| i as u32)
    }

    /// The `ConnId` of a live slot.
    pub(crate) fn id(&self, shard: usize, slot: u32) -> ConnId {
        ConnId {
            shard: shard as u32,
            slot,
            gen: self.gen(slot),
        }
    }
}

fn s_gen(s: &Slot) -> u32 {
    s.gen
}
