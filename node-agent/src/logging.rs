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
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// Install the console subscriber. Safe to call once; a second call is a no-op
/// (the global default can only be set once).
pub fn init(max_level: LevelFilter) {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(ConsoleAndRing)
        .with_ansi(false)
        .with_max_level(max_level)
        .event_format(ConsoleFormat)
        .finish()
        .with(targets(max_level));
    // Fails only if a subscriber is already set, in which case that one logs.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The library crates' own INFO lines (caisson-net's "DHCP lease … bound")
/// repeat what the agent logs with more detail: shown only at debug level.
/// Their warnings always show.
fn targets(max_level: LevelFilter) -> Targets {
    let libraries = if max_level > LevelFilter::INFO {
        max_level
    } else {
        max_level.min(LevelFilter::WARN)
    };
    Targets::new()
        .with_default(max_level)
        .with_target(NET_TARGET, libraries)
}

const NET_TARGET: &str = "caisson_net";

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
        if event.metadata().target().starts_with(NET_TARGET) {
            // caisson-net names the link in a field: `network: eth0: …`.
            let mut fields = NetFields::default();
            event.record(&mut fields);
            write!(writer, "{}", fields.line())?;
        } else {
            ctx.field_format().format_fields(writer.by_ref(), event)?;
        }
        writeln!(writer)
    }
}

/// A caisson-net event's message, its `interface` field, and the rest.
#[derive(Default)]
struct NetFields {
    message: String,
    interface: Option<String>,
    others: Vec<String>,
}

impl NetFields {
    fn line(&self) -> String {
        let mut line = String::from("network: ");
        if let Some(link) = &self.interface {
            line.push_str(link);
            line.push_str(": ");
        }
        line.push_str(&self.message);
        for other in &self.others {
            line.push(' ');
            line.push_str(other);
        }
        line
    }
}

impl Visit for NetFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "interface" => self.interface = Some(format!("{value:?}")),
            name => self.others.push(format!("{name}={value:?}")),
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "interface" => self.interface = Some(value.to_string()),
            name => self.others.push(format!("{name}={value}")),
        }
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
    fn library_info_lines_show_only_at_debug_level_and_warnings_always() {
        let info = targets(LevelFilter::INFO);
        assert!(!info.would_enable("caisson_net::dhcp::client", &Level::INFO));
        assert!(info.would_enable("caisson_net::dhcp::client", &Level::WARN));
        assert!(info.would_enable("node_agent::network", &Level::INFO));
        let debug = targets(LevelFilter::DEBUG);
        assert!(debug.would_enable("caisson_net::dhcp::client", &Level::INFO));
        assert!(debug.would_enable("caisson_net::dhcp::client", &Level::DEBUG));
    }

    #[test]
    fn caisson_net_events_read_like_the_agents_network_lines() {
        let f = NetFields {
            message: "rp_filter is 1: the kernel may drop DHCP offers".into(),
            interface: Some("eth0".into()),
            others: vec![],
        };
        assert_eq!(
            f.line(),
            "network: eth0: rp_filter is 1: the kernel may drop DHCP offers"
        );
    }

    #[test]
    fn boot_clock_moves_forward() {
        let a = since_boot();
        let b = since_boot();
        assert!(a > Duration::ZERO && b >= a);
    }
}
