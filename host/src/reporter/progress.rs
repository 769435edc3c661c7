//! The live progress line: on a terminal only, never in CI or when piped,
//! and only once a run has taken more than a second.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a run goes before the line appears: short runs print nothing extra.
const SHOW_AFTER: Duration = Duration::from_secs(1);

pub struct Progress {
    bar: Option<ProgressBar>,
    enabled: bool,
    started: Instant,
    done: u64,
    failed: u64,
}

impl Progress {
    /// Enabled when stderr is a terminal and `CI` is not set.
    pub fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        let enabled =
            enabled && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Progress {
            bar: None,
            enabled,
            started: Instant::now(),
            done: 0,
            failed: 0,
        }
    }

    pub fn case_done(&mut self, failed: bool) {
        self.done += 1;
        self.failed += u64::from(failed);
        if self.enabled && self.bar.is_none() && self.started.elapsed() > SHOW_AFTER {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} cases done, {} failed", self.done, self.failed));
        }
    }

    pub fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
