//! The live progress line: on a terminal only, never in CI or when piped,
//! and only once a run has taken more than a second.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a run goes before the line appears: short runs print nothing extra.
const SHOW_AFTER: Duration = Duration::from_secs(1);

pub struct Progress {
    bar: Option<ProgressBar>,
    done: u64,
    failed: u64,
}

impl Progress {
    /// Shown when `wanted`, stderr is a terminal and `CI` is not set.
    pub fn new(wanted: bool) -> Self {
        use std::io::IsTerminal;
        let enabled = wanted && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
            );
            bar.set_message("running");
            let reveal = bar.clone();
            std::thread::spawn(move || {
                std::thread::sleep(SHOW_AFTER);
                if !reveal.is_finished() {
                    reveal.set_draw_target(ProgressDrawTarget::stderr());
                    reveal.enable_steady_tick(Duration::from_millis(100));
                }
            });
            bar
        });
        Progress {
            bar,
            done: 0,
            failed: 0,
        }
    }

    pub fn case_done(&mut self, failed: bool) {
        self.done += 1;
        self.failed += u64::from(failed);
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{} cases done, {} failed, running",
                self.done, self.failed
            ));
        }
    }

    /// Runs `f` (which prints) with the line cleared, then redraws it.
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
