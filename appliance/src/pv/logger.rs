//! A `log` backend that prints "[uptime] LEVEL message" lines to the console.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let us = super::time::uptime_ns() / 1000;
        let tag = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        crate::println!(
            "[{:5}.{:06}] {} {}",
            us / 1_000_000,
            us % 1_000_000,
            tag,
            r.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger at level `level`.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Changes the level (from the configuration).
pub fn set_level(level: resilire_appliance::config::LogLevel) {
    use resilire_appliance::config::LogLevel as L;
    log::set_max_level(match level {
        L::Error => LevelFilter::Error,
        L::Warn => LevelFilter::Warn,
        L::Info => LevelFilter::Info,
        L::Debug => LevelFilter::Debug,
        L::Trace => LevelFilter::Trace,
    });
}
