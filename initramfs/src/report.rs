//! Console messages, kept pure so their wording is tested.

use std::io::Write as _;
use std::time::Duration;

use caisson_devices::{BlockDevice, DevicesError};

pub const PREFIX: &str = "caisson-init";

/// Print a line on the console (stderr is /dev/console). Write errors are
/// ignored: there is nowhere else to report them, and PID 1 must not panic
/// the way `eprintln!` would.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Device names for the root-not-found message; a listing failure is
/// shown in their place.
pub fn root_not_found_seen(list: Result<Vec<BlockDevice>, DevicesError>) -> Vec<String> {
    match list {
        Ok(devices) => devices.into_iter().map(|d| d.name).collect(),
        Err(e) => vec![format!("(cannot list block devices: {e})")],
    }
}

pub fn starting(version: &str) -> String {
    format!("{PREFIX} {version}: starting")
}

/// The one line printed before rebooting. Newlines inside the error are
/// flattened so the console shows exactly one FATAL line.
pub fn fatal(error: &dyn std::fmt::Display) -> String {
    let text = error.to_string().replace('\n', " ");
    format!("{PREFIX}: FATAL: {text}")
}

pub fn step_done(step: &str, took: Duration) -> String {
    format!("{PREFIX}: {step} ({} ms)", took.as_millis())
}

pub fn root_not_found(
    spec: &str,
    waited_secs: u64,
    seen: &[String],
    module_failures: &[String],
) -> String {
    let seen = if seen.is_empty() {
        "none".to_string()
    } else {
        seen.join(" ")
    };
    let mut line = format!(
        "root partition {spec} not found after {waited_secs} s; block devices seen: {seen}"
    );
    if !module_failures.is_empty() {
        line.push_str("; modules that failed to load: ");
        line.push_str(&module_failures.join(", "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_not_found_lists_devices_or_none() {
        let seen = vec!["vda".to_string(), "vda1".to_string()];
        assert_eq!(
            root_not_found("PARTUUID=x", 3, &seen, &[]),
            "root partition PARTUUID=x not found after 3 s; block devices seen: vda vda1"
        );
        assert_eq!(
            root_not_found(
                "PARTLABEL=ROOT-A",
                30,
                &[],
                &["virtio_blk (ENOENT)".to_string()]
            ),
            "root partition PARTLABEL=ROOT-A not found after 30 s; block devices seen: none; \
             modules that failed to load: virtio_blk (ENOENT)"
        );
    }

    #[test]
    fn fatal_is_a_single_prefixed_line() {
        let line = fatal(&"mount squashfs /dev/vda2 on /sysroot:\nEINVAL");
        assert_eq!(
            line,
            "caisson-init: FATAL: mount squashfs /dev/vda2 on /sysroot: EINVAL"
        );
        assert_eq!(starting("0.1.0"), "caisson-init 0.1.0: starting");
        assert_eq!(
            step_done("modules", Duration::from_millis(1500)),
            "caisson-init: modules (1500 ms)"
        );
    }
}
