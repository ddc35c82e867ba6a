//! The console log: one line per event on stderr (`/dev/console`, inherited
//! from `init`), stamped with seconds since boot like the kernel's own lines so
//! the two interleave readably. No colours: serial consoles and log captures
//! would show the escape codes.
//!
//! Format: `[   3.123] message` for INFO, `[   3.123] WARN: message` and
//! `[   3.123] ERROR: message` otherwise. The message text itself (phase
//! lines, shutdown lines) is what tests grep for.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Install the console subscriber. Safe to call once; a second call is a no-op
/// (the global default can only be set once).
pub fn init(max_level: LevelFilter) {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(ConsoleAndRing)
        .with_ansi(false)
        .with_max_level(max_level)
        .event_format(ConsoleFormat)
        .finish();
    // Fails only if a subscriber is already set, in which case that one logs.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The level asked for on the kernel command line with `caisson.log=`;
/// INFO unless a known level is given.
pub fn level_from_cmdline(value: Option<&str>) -> LevelFilter {
    match value {
        Some("trace") => LevelFilter::TRACE,
        Some("debug") => LevelFilter::DEBUG,
        Some("warn") => LevelFilter::WARN,
        Some("error") => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    }
}

/// Time since boot, including time suspended (CLOCK_BOOTTIME), as the
/// kernel's printk timestamps count it. Zero if the clock cannot be read.
pub fn since_boot() -> Duration {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|ts| {
            Duration::new(
                ts.tv_sec().max(0) as u64,
                ts.tv_nsec().clamp(0, 999_999_999) as u32,
            )
        })
        .unwrap_or_default()
}

/// `[   3.123]`: seconds right-aligned in four columns, then milliseconds.
pub fn uptime_stamp(t: Duration) -> String {
    format!("[{:>4}.{:03}]", t.as_secs(), t.subsec_millis())
}

/// Each event is formatted into one buffer and written with one call, so
/// each write here is whole lines.
struct ConsoleAndRing;

impl<'a> MakeWriter<'a> for ConsoleAndRing {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        Tee
    }
}

struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The console may be gone or full; the ring still gets the line.
        let _ = io::stderr().write_all(buf);
        crate::logs::agent_log().push(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

struct ConsoleFormat;

impl<S, N> FormatEvent<S, N> for ConsoleFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{} ", uptime_stamp(since_boot()))?;
        let level = *event.metadata().level();
        if level != Level::INFO {
            write!(writer, "{level}: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_stamps_look_like_the_kernels() {
        assert_eq!(uptime_stamp(Duration::from_millis(3123)), "[   3.123]");
        assert_eq!(uptime_stamp(Duration::from_micros(999)), "[   0.000]");
        assert_eq!(uptime_stamp(Duration::from_secs(12345)), "[12345.000]");
    }

    #[test]
    fn log_level_defaults_to_info() {
        assert_eq!(level_from_cmdline(None), LevelFilter::INFO);
        assert_eq!(level_from_cmdline(Some("loud")), LevelFilter::INFO);
        assert_eq!(level_from_cmdline(Some("debug")), LevelFilter::DEBUG);
    }

    #[test]
    fn boot_clock_moves_forward() {
        let a = since_boot();
        let b = since_boot();
        assert!(a > Duration::ZERO && b >= a);
    }
}
