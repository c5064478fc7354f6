//! A stand-in for the shard, the mailbox and quinn-proto, driving a real [`StreamPipe`] with the
//! real notify logic, for the loom model test `tests/loom_pipe.rs`. Only built with
//! `--cfg loom`; not part of the API.
//!
//! The "mailbox" is a counter of posted service messages behind a loom mutex and condvar; the
//! "shard" waits for a post, takes its [`ShardQueue`] and services the pipe against an in-memory
//! QUIC stream.
#![allow(missing_docs)]

use std::sync::Arc;

use quinn_proto::{Dir, Side, StreamId, VarInt};

use super::blocking::{wait_for, Stall};
use super::pipe::{PipeDir, QuicRecv, QuicSend, RecvEnd, StreamPipe};
use super::queue::{Ready, ShardQueue};
use super::sync::{lock, Condvar, Mutex};
use super::waitable::Wait;
use crate::handler::ConnId;

struct Mailbox {
    posts: Mutex<usize>,
    cv: Condvar,
}

/// The app's end of the modelled pipe.
pub struct App {
    pipe: Arc<StreamPipe>,
}

/// The modelled shard.
pub struct Shard {
    pipe: Arc<StreamPipe>,
    queue: Arc<ShardQueue>,
    mailbox: Arc<Mailbox>,
    seen: usize,
    /// Bytes the in-memory QUIC stream took (send) or still has to deliver (recv).
    pub quic: Vec<u8>,
    /// Send: FIN reached QUIC. Recv: QUIC will report FIN after `quic` is delivered.
    pub fin: bool,
}

/// A pipe of `cap` bytes in direction `send` (app → QUIC) or not (QUIC → app, which will deliver
/// `incoming` then FIN).
pub fn pipe(send: bool, cap: usize, incoming: &[u8]) -> (App, Shard) {
    let mailbox = Arc::new(Mailbox {
        posts: Mutex::new(crate::ranks::MODEL_MAILBOX, 0),
        cv: Condvar::new(),
    });
    let mb = mailbox.clone();
    let queue = Arc::new(ShardQueue::new(Box::new(move || {
        *lock(&mb.posts) += 1;
        mb.cv.notify_one();
        true
    })));
    let conn = ConnId {
        shard: 0,
        slot: 0,
        gen: 0,
    };
    let dir = if send { PipeDir::Send } else { PipeDir::Recv };
    let id = StreamId::new(Side::Client, Dir::Bi, 0);
    let pipe = StreamPipe::new(conn, id, dir, cap, queue.clone());
    (
        App { pipe: pipe.clone() },
        Shard {
            pipe,
            queue,
            mailbox,
            seen: 0,
            quic: incoming.to_vec(),
            fin: !send,
        },
    )
}

impl App {
    /// Blocking write of all of `data`.
    pub fn write_all(&self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = wait_for(
                false,
                None,
                &Default::default(),
                |how| self.pipe.write(data, how),
                |sig| self.pipe.unblock_thread(sig),
                |_: Stall| super::error::WriteError::TimedOut,
            )
            .expect("model write");
            data = &data[n..];
        }
    }

    pub fn finish(&self) {
        self.pipe.finish().expect("model finish");
    }

    /// Blocking read; 0 at the end.
    pub fn read(&self, out: &mut [u8]) -> usize {
        wait_for(
            false,
            None,
            &Default::default(),
            |how| self.pipe.read(out, how),
            |sig| self.pipe.unblock_thread(sig),
            |_: Stall| super::error::ReadError::TimedOut,
        )
        .expect("model read")
    }

    pub fn stop(&self) {
        self.pipe.stop(VarInt::from_u32(1)).expect("model stop");
    }

    /// Blocking read that reports errors (0 at the end, `None` on an error).
    pub fn try_read(&self, out: &mut [u8]) -> Option<usize> {
        wait_for(
            false,
            None,
            &Default::default(),
            |how| self.pipe.read(out, how),
            |sig| self.pipe.unblock_thread(sig),
            |_: Stall| super::error::ReadError::TimedOut,
        )
        .ok()
    }
}

struct Sink<'a>(&'a mut Vec<u8>, &'a mut bool);

impl QuicSend for Sink<'_> {
    fn write(&mut self, data: bytes::Bytes) -> Result<usize, quinn_proto::WriteError> {
        self.0.extend_from_slice(&data);
        Ok(data.len())
    }
    fn finish(&mut self) {
        *self.1 = true;
    }
    fn reset(&mut self, _code: VarInt) {}
    fn stopped(&mut self) -> Option<VarInt> {
        None
    }
}

struct Source<'a>(&'a mut Vec<u8>, bool, &'a mut bool);

impl QuicRecv for Source<'_> {
    fn read(&mut self, max: usize, push: &mut dyn FnMut(&[u8])) -> RecvEnd {
        if self.0.is_empty() {
            return if self.1 {
                RecvEnd::Fin
            } else {
                RecvEnd::Blocked
            };
        }
        let n = max.min(self.0.len());
        push(&self.0[..n]);
        self.0.drain(..n);
        if self.0.is_empty() && self.1 {
            RecvEnd::Fin
        } else {
            RecvEnd::More
        }
    }
    fn stop(&mut self, _code: VarInt) {
        *self.2 = true;
    }
}

impl Shard {
    /// Waits for the next posted service message and takes the queue.
    pub fn wait_post(&mut self) {
        let mut posts = lock(&self.mailbox.posts);
        while *posts == self.seen {
            posts = self.mailbox.cv.wait(posts);
        }
        self.seen = *posts;
        drop(posts);
        let mut items = Vec::new();
        self.queue.take(&mut items);
        for i in items {
            assert!(matches!(i, Ready::Pipe(_)), "only the pipe is queued");
        }
    }

    /// The connection is lost (as the shard's `on_closed` does).
    pub fn fail(&self) {
        self.pipe.fail(&quinn_proto::ConnectionError::TimedOut);
    }

    /// Messages posted so far.
    pub fn posts(&self) -> usize {
        *lock(&self.mailbox.posts)
    }

    /// Services the pipe (as on a post or a QUIC event); returns whether it is done. For a
    /// receive pipe, `stopped` tells whether STOP_SENDING reached QUIC.
    pub fn service(&mut self, stopped: &mut bool) -> bool {
        match self.pipe.dir {
            PipeDir::Send => self
                .pipe
                .service_send(&mut Sink(&mut self.quic, &mut self.fin)),
            PipeDir::Recv => self
                .pipe
                .service_recv(&mut Source(&mut self.quic, self.fin, stopped)),
        }
    }
}
