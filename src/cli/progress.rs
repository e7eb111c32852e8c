//! The CLI's [`Progress`]: an indicatif bar on stderr, shown only once the operation has taken
//! more than a second (a quick one leaves no trace on the terminal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::Progress;

/// A byte-counting bar, hidden for its first second.
pub struct Bar {
    bar: ProgressBar,
    started: Instant,
    shown: AtomicBool,
}

impl Bar {
    /// A bar counting bytes, with the current item's name on its left (gen-model).
    pub fn bytes() -> Bar {
        Bar::with_template("{msg:>28} [{bar:40}] {bytes}/{total_bytes} ({eta})")
    }

    /// A bar counting compared stages (diff).
    pub fn stages() -> Bar {
        Bar::with_template("diff [{bar:40}] {pos}/{len} stages {elapsed_precise}")
    }

    fn with_template(template: &str) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Bar {
            bar,
            started: Instant::now(),
            shown: AtomicBool::new(false),
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
    }

    fn message(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
        if !self.shown.load(Ordering::Relaxed) && self.started.elapsed() > Duration::from_secs(1) {
            self.shown.store(true, Ordering::Relaxed);
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
