//! The download progress bar of `get`: files done and bytes received, drawn on stderr only when
//! stderr is a terminal and only once the downloads have taken longer than [`DELAY`] (a quick
//! `get` prints nothing but its summary line).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Downloads quicker than this show no bar.
const DELAY: Duration = Duration::from_secs(1);
/// How often a shown bar redraws.
const REDRAW: Duration = Duration::from_millis(100);

/// A progress bar for `files` downloads; hidden until [`DELAY`] has passed.
pub(crate) struct Progress {
    bar: ProgressBar,
    files: u64,
    finished: AtomicU64,
    /// Dropped (disconnected) by [`Progress::finish`]: the waiting thread then exits.
    done: Option<Sender<()>>,
    waiter: Option<JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn new(files: u64) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                .expect("a valid template"),
        );
        bar.set_message(format!("0/{files} files"));
        let (done, wait) = bounded::<()>(0);
        let shown = bar.clone();
        let waiter = std::io::stderr().is_terminal().then(|| {
            std::thread::spawn(move || {
                // a timeout means still downloading; a disconnect means finished
                if wait.recv_timeout(DELAY) == Err(RecvTimeoutError::Timeout) {
                    shown.set_draw_target(ProgressDrawTarget::stderr());
                    shown.enable_steady_tick(REDRAW);
                }
            })
        });
        Self {
            bar,
            files,
            finished: AtomicU64::new(0),
            done: Some(done),
            waiter,
        }
    }

    /// A file arrived whole.
    pub(crate) fn file_done(&self) {
        let n = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_message(format!("{n}/{} files", self.files));
    }

    /// `n` more body bytes arrived.
    pub(crate) fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Removes the bar (if it was shown).
    pub(crate) fn finish(&mut self) {
        drop(self.done.take());
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
