//! Progress bars for long commands (`compliance report`, `evidence export`,
//! `ingest` of many files or a watched directory, `audit verify`): drawn on
//! stderr with `indicatif`, with rate and ETA, only when stderr is a
//! terminal and the output is not `--json`. Otherwise nothing is drawn and
//! nothing extra is printed, so piped and scripted output stays exactly what
//! the command prints on stdout.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// What a bar counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Things, named in the plural (e.g. `"objects"`).
    Items(&'static str),
    /// Bytes, shown human-readable.
    Bytes,
}

/// A progress bar on stderr, or nothing. Cleared when finished or dropped.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

/// Whether a bar is drawn: stderr is a terminal and the output is not JSON.
pub fn enabled(json_out: bool) -> bool {
    !json_out && std::io::stderr().is_terminal()
}

impl Progress {
    /// A bar counting `unit`, of unknown length until [`Progress::set_length`];
    /// hidden unless [`enabled`].
    pub fn new(unit: Unit, json_out: bool) -> Progress {
        if !enabled(json_out) {
            return Progress {
                bar: ProgressBar::hidden(),
            };
        }
        let template = match unit {
            Unit::Items(what) => format!(
                "{{elapsed_precise}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {what}, {{rate}}, ETA {{eta}} {{msg}}"
            ),
            Unit::Bytes => "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes}, {bytes_per_sec}, ETA {eta} {msg}".to_string(),
        };
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", s.per_sec());
            })
            .progress_chars("=> ");
        let bar =
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style);
        Progress { bar }
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Sets the total.
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// Sets how much is done.
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Counts `n` more done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the text after the figures.
    pub fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Runs `f` (which prints to stdout or stderr) with the bar lifted off
    /// the terminal, so lines and bar do not mix.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_never_draws() {
        let p = Progress::new(Unit::Bytes, true);
        assert!(!p.is_shown());
        p.set_length(10);
        p.inc(5);
        p.finish();
    }
}
