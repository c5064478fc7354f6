//! The one generic waitable: what every object an app can wait on (a stream pipe, a connection,
//! the accept queue) has in common. Each keeps its state under one mutex, with the [`Waiters`]
//! in it, and says when it is ready ([`Waitable`]); registering a blocked caller, withdrawing a
//! thread and attaching a poller are written once, here ([`Wait`], object-safe, for
//! [`block_until`](super::block_until) over mixed objects).
//!
//! Every decision is taken under the object's mutex, in the same critical section that looked at
//! its state, so no wake-up is lost between "not ready" and "registered" (see [`super::notify`]).

use std::sync::Arc;

use super::notify::{Block, ThreadSignal, Waiters};
use super::progress::ProgressLink;
use super::registration::Registration;
use super::sync::{lock, Mutex};

/// An object app threads, tasks and pollers wait on.
pub(crate) trait Waitable {
    /// The state under the object's mutex.
    type State;
    /// The object's mutex.
    fn state(&self) -> &Mutex<Self::State>;
    /// The registrations inside the state.
    fn waiters(state: &mut Self::State) -> &mut Waiters;
    /// Whether an operation would not block now (it would succeed or fail at once).
    fn is_ready(&self, state: &Self::State) -> bool;
    /// How a wait on the object gets its shard to make progress.
    fn link(&self) -> &ProgressLink;
}

/// The wait operations of a [`Waitable`], object-safe.
pub(crate) trait Wait {
    /// `true` if ready now; otherwise registers `how`.
    fn register(&self, how: Block<'_>) -> bool;
    /// Forgets a thread that stopped waiting (deadline, or another object became ready).
    fn unblock_thread(&self, sig: &Arc<ThreadSignal>);
    /// Sets (or clears) the poller registration; a ready object reports at once.
    fn set_poll(&self, reg: Option<Arc<Registration>>);
    /// See [`Waitable::link`].
    fn progress(&self) -> &ProgressLink;
}

impl<T: Waitable> Wait for T {
    fn register(&self, how: Block<'_>) -> bool {
        let mut s = lock(self.state());
        if self.is_ready(&s) {
            return true;
        }
        T::waiters(&mut s).block(how);
        false
    }

    fn unblock_thread(&self, sig: &Arc<ThreadSignal>) {
        T::waiters(&mut lock(self.state())).unblock_thread(sig);
    }

    fn set_poll(&self, reg: Option<Arc<Registration>>) {
        let wake = {
            let mut s = lock(self.state());
            let ready = reg.is_some() && self.is_ready(&s);
            T::waiters(&mut s).set_poll(reg, ready)
        };
        wake.wake();
    }

    fn progress(&self) -> &ProgressLink {
        self.link()
    }
}
