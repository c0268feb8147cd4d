//! Progress of a long transfer (protect's initial synchronisation): on a
//! terminal a bar redrawn in place with rate and ETA; otherwise (a log, a
//! serial console) a plain line every few seconds.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a plain log line is printed when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(2);
/// How often the bar is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(100);
/// Width of the bar in characters.
const WIDTH: usize = 30;

/// A progress report over `total` units of `unit_bytes` bytes each.
pub struct Progress {
    what: String,
    total: u64,
    unit_bytes: u64,
    done: u64,
    t0: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    /// Starts a report on stderr; `tty` is detected.
    pub fn new(what: &str, total: u64, unit_bytes: u64) -> Self {
        Self::with_tty(what, total, unit_bytes, std::io::stderr().is_terminal())
    }

    /// Starts a report with the output kind forced (tests).
    pub fn with_tty(what: &str, total: u64, unit_bytes: u64, tty: bool) -> Self {
        let now = Instant::now();
        Progress {
            what: what.to_string(),
            total: total.max(1),
            unit_bytes,
            done: 0,
            t0: now,
            last: now,
            tty,
        }
    }

    /// `n` more units are done.
    pub fn add(&mut self, n: u64) {
        self.done = (self.done + n).min(self.total);
        let every = if self.tty { DRAW_EVERY } else { LOG_EVERY };
        if self.last.elapsed() >= every || self.done == self.total {
            self.last = Instant::now();
            let line = self.render();
            let mut err = std::io::stderr().lock();
            if self.tty {
                let _ = write!(err, "\r{line}\x1b[K");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
    }

    /// Ends the report (the bar's line is closed on a terminal).
    pub fn finish(self) {
        if self.tty {
            eprintln!();
        }
    }

    /// The current line: bar (terminal only), percentage, MiB, rate, ETA.
    pub fn render(&self) -> String {
        let secs = self.t0.elapsed().as_secs_f64().max(1e-3);
        let frac = self.done as f64 / self.total as f64;
        let mib = |u: u64| (u * self.unit_bytes) as f64 / 1048576.0;
        let rate = mib(self.done) / secs;
        let eta = if self.done == 0 || rate <= 0.0 {
            "?".to_string()
        } else {
            let left = (mib(self.total) - mib(self.done)) / rate;
            format!("{}:{:02}", (left as u64) / 60, (left as u64) % 60)
        };
        let figures = format!(
            "{:5.1}% {:.1}/{:.1} MiB {:.1} MiB/s ETA {eta}",
            frac * 100.0,
            mib(self.done),
            mib(self.total),
            rate
        );
        if self.tty {
            let full = (frac * WIDTH as f64).round() as usize;
            format!(
                "{} [{}{}] {figures}",
                self.what,
                "#".repeat(full),
                "-".repeat(WIDTH - full)
            )
        } else {
            format!("{}: {figures}", self.what)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn renders_bar_on_a_terminal_and_plain_lines_otherwise() {
        let mut p = Progress::with_tty("sync", 100, 1048576, true);
        p.done = 50;
        let line = p.render();
        assert!(
            line.starts_with("sync [###############---------------]  50.0% 50.0/100.0 MiB"),
            "{line}"
        );
        assert!(line.contains("MiB/s ETA "), "{line}");
        let mut q = Progress::with_tty("sync", 100, 1048576, false);
        q.done = 25;
        let line = q.render();
        assert!(line.starts_with("sync:  25.0% 25.0/100.0 MiB"), "{line}");
        assert!(!line.contains('['));
    }
}
