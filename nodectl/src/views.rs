//! How each answer of the node API reads in `-o table`, and what `-o json`
//! carries. Pure: bytes in, [`Outcome`] out.

use caisson_api::audit::AuditRecord;
use caisson_api::types::{
    ApplyResponse, ConfigChange, Health, RollbackResponse, ServiceStatus, SlotInfo, UpgradeRecord, UpgradeResponse,
    VersionInfo,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::failure::Failure;
use crate::render::{Outcome, Table, View};

fn decode<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<(T, Value), Failure> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Failure::new(
            "bad-response",
            format!("the node's {what} answer is not JSON: {e}"),
        )
    })?;
    let typed = serde_json::from_value(value.clone()).map_err(|e| {
        Failure::new(
            "bad-response",
            format!("the node's {what} answer is not understood: {e}"),
        )
    })?;
    Ok((typed, value))
}

pub fn version(body: &[u8]) -> Result<Outcome, Failure> {
    let (v, json): (VersionInfo, _) = decode("version", body)?;
    let mut t = Table::new(&["HOSTNAME", "IMAGE", "AGENT", "SLOT", "KERNEL", "MODE", "SLOT A", "SLOT B", "LAST UPGRADE"]);
    let mode = match (v.maintenance, v.live) {
        (true, false) => "maintenance",
        (false, false) => "normal",
        // STATE and DATA in memory: nothing survives a reboot.
        (true, true) => "maintenance, live",
        (false, true) => "normal, live",
    };
    let slot = |name: &str| {
        v.slots
            .iter()
            .find(|s| s.slot == name)
            .map(slot_cell)
            .unwrap_or_else(|| "-".into())
    };
    let (a, b) = (slot("a"), slot("b"));
    t.row(vec![
        v.hostname,
        v.image_version,
        v.agent_version,
        v.slot,
        v.kernel,
        mode.into(),
        a,
        b,
        v.last_upgrade.as_ref().map(last_upgrade_cell).unwrap_or_else(|| "-".into()),
    ]);
    Ok(Outcome::new(json, View::Table(t)))
}

/// `0.2.0 trying (2 left)`, `0.1.0 known-good`, `0.2.0 bad: why`.
pub fn slot_cell(s: &SlotInfo) -> String {
    let mut cell = format!("{} {}", s.version.as_deref().unwrap_or("-"), s.state);
    if let Some(left) = s.tries_left {
        cell.push_str(&format!(" ({left} left)"));
    }
    if let Some(note) = &s.note {
        cell.push_str(&format!(": {note}"));
    }
    cell
}

/// `upgrade 0.1.0 -> 0.2.0 (slot b) by admin at <utc>: blessed`.
pub fn last_upgrade_cell(u: &UpgradeRecord) -> String {
    format!(
        "{} {} -> {} (slot {}) by {} at {}: {}",
        u.kind,
        u.from_version,
        u.to_version,
        u.slot,
        u.by,
        utc(u.started_ms),
        u.outcome
    )
}

pub fn upgraded(body: &[u8]) -> Result<Outcome, Failure> {
    let (u, json): (UpgradeResponse, _) = decode("upgrade", body)?;
    let signed = match &u.signed_by {
        Some(k) => format!("signed by key {k}"),
        None => "unsigned (allowed by the node's upgrade.allow_unsigned)".into(),
    };
    let next = if u.staged {
        "staged: it boots at the next reboot".to_string()
    } else {
        "rebooting into it; it is blessed once its health gates pass, else the node rolls back by itself".into()
    };
    let mut text = format!(
        "{} -> {}: slot {} written ({} bytes in {:.1} s, root at {:.1} MB/s), {signed}; entry {}; {next}",
        u.from_version, u.version, u.slot, u.bytes, u.seconds, u.root_write_mb_s, u.entry
    );
    if let Some(disk) = u.disk_write_mb_s {
        text.push_str(&format!(
            "\nwrite path {:.1} MB/s vs the disk's own {disk:.1} MB/s ({:.0} %)",
            u.root_write_busy_mb_s,
            100.0 * u.root_write_busy_mb_s / disk.max(1e-6)
        ));
    }
    Ok(Outcome::new(json, View::Text(text)))
}

pub fn rolled_back(body: &[u8]) -> Result<Outcome, Failure> {
    let (r, json): (RollbackResponse, _) = decode("rollback", body)?;
    let text = format!(
        "slot {} ({}) boots next instead of {}{}",
        r.slot,
        r.version,
        r.from_version,
        if r.rebooting { "; rebooting" } else { "; at the next reboot" }
    );
    Ok(Outcome::new(json, View::Text(text)))
}

pub fn health(body: &[u8]) -> Result<Outcome, Failure> {
    let (h, json): (Health, _) = decode("health", body)?;
    let verdict = |ok: bool| if ok { "ok" } else { "FAIL" }.to_string();
    let mut t = Table::new(&["CHECK", "STATUS", "DETAIL"]);
    t.row(vec!["ready".into(), verdict(h.ready), String::new()]);
    for c in h.checks {
        t.row(vec![c.name, verdict(c.ok), c.detail]);
    }
    Ok(Outcome {
        json,
        view: View::Table(t),
        ok: h.ready,
    })
}

pub fn config(body: &[u8]) -> Result<Outcome, Failure> {
    let text = String::from_utf8_lossy(body).into_owned();
    Ok(Outcome::new(
        Value::String(text.clone()),
        View::Text(text.trim_end().to_string()),
    ))
}

pub fn services(body: &[u8]) -> Result<Outcome, Failure> {
    let (list, json): (Vec<ServiceStatus>, _) = decode("services", body)?;
    let mut t = Table::new(&[
        "SERVICE",
        "STATE",
        "HEALTHY",
        "RESTARTS",
        "LAST EXIT",
        "MEMORY",
        "PID",
    ]);
    for s in list {
        let healthy = match (s.healthy, s.health.as_deref()) {
            (true, _) => "yes".to_string(),
            (false, None) => "no".to_string(),
            (false, Some(why)) => format!("no: {}", shorten(why, 40)),
        };
        let last_exit = match (s.last_exit, s.last_exit_secs_ago) {
            (Some(how), Some(secs)) => format!("{how}, {} ago", ago(secs)),
            (Some(how), None) => how,
            (None, _) => "-".into(),
        };
        let dash = || "-".to_string();
        t.row(vec![
            s.name,
            s.state,
            healthy,
            s.restarts.to_string(),
            last_exit,
            s.memory_bytes.map(binary_bytes).unwrap_or_else(dash),
            s.pid.map(|p| p.to_string()).unwrap_or_else(dash),
        ]);
    }
    Ok(Outcome::new(json, View::Table(t)))
}

/// At most `max` characters, "…" marking a cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// "45s", "12m", "3h", "2d".
fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// "512 KiB", "87.3 MiB", "1.25 GiB".
fn binary_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB * KIB {
        format!("{:.0} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

pub fn audit(body: &[u8]) -> Result<Outcome, Failure> {
    let (records, json): (Vec<AuditRecord>, _) = decode("audit", body)?;
    let mut t = Table::new(&["TIME", "CN", "ROLE", "ENDPOINT", "ARGS", "RESULT"]);
    for r in records {
        let args = if r.args.is_null() {
            String::new()
        } else {
            r.args.to_string()
        };
        t.row(vec![
            utc(r.time_ms),
            r.cn,
            r.role,
            r.endpoint,
            args,
            r.result,
        ]);
    }
    Ok(Outcome::new(json, View::Table(t)))
}

/// A one-line acknowledgement (reboot, restart, …) with the node's JSON.
pub fn ack(sentence: &str, body: &[u8]) -> Result<Outcome, Failure> {
    let json = serde_json::from_slice(body).unwrap_or(Value::Null);
    Ok(Outcome::new(json, View::Text(sentence.to_string())))
}

pub fn applied(body: &[u8]) -> Result<Outcome, Failure> {
    let (r, json): (ApplyResponse, _) = decode("apply-config", body)?;
    Ok(Outcome::new(json, View::Text(apply_report(&r))))
}

/// The diff (secrets already masked by the node), what was applied and what
/// waits for a reboot.
pub fn apply_report(r: &ApplyResponse) -> String {
    let mut out = Vec::new();
    if r.changes.is_empty() {
        out.push("no changes".to_string());
    } else {
        out.push(format!(
            "{} change{}:",
            r.changes.len(),
            if r.changes.len() == 1 { "" } else { "s" }
        ));
        out.extend(r.changes.iter().map(change_line));
    }
    if r.dry_run {
        out.push("dry run: nothing was changed on the node".into());
        return out.join("\n");
    }
    if !r.applied.is_empty() {
        out.push(format!("applied live: {}", r.applied.join(", ")));
    }
    if r.needs_reboot.is_empty() {
        out.push("nothing needs a reboot".into());
    } else {
        out.push(format!("needs a reboot: {}", r.needs_reboot.join(", ")));
    }
    if let Some(secs) = r.confirm_within_secs {
        out.push(format!(
            "confirm within {secs}s with `nodectl apply-config --confirm`, or the node restores the previous config"
        ));
    }
    out.join("\n")
}

fn change_line(c: &ConfigChange) -> String {
    match (&c.old, &c.new) {
        (None, Some(new)) => format!("  + {} = {new}", c.path),
        (Some(old), None) => format!("  - {} = {old}", c.path),
        (Some(old), Some(new)) => format!("  ~ {}: {old} -> {new}", c.path),
        (None, None) => format!("  ~ {}", c.path),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from milliseconds since the epoch.
pub fn utc(time_ms: u64) -> String {
    let secs = time_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_show_health_restarts_last_exit_and_memory() {
        let body = br#"[
            {"name": "containerd", "state": "running", "healthy": true, "restarts": 0, "pid": 412,
             "memory_bytes": 91553792, "since_secs": 300},
            {"name": "k3s", "state": "backoff 4s", "healthy": false, "restarts": 3, "pid": null,
             "health": "https://127.0.0.1:6443/ping: Connection refused (os error 111)",
             "last_exit": "exited 1", "last_exit_secs_ago": 2, "memory_bytes": 524288},
            {"name": "old-node", "state": "running", "healthy": true, "restarts": 1, "pid": 7}
        ]"#;
        let View::Table(t) = services(body).unwrap().view else {
            panic!("not a table")
        };
        assert_eq!(
            t.lines(),
            [
                "SERVICE     STATE       HEALTHY                                       RESTARTS  LAST EXIT         MEMORY    PID",
                "containerd  running     yes                                           0         -                 87.3 MiB  412",
                "k3s         backoff 4s  no: https://127.0.0.1:6443/ping: Connection…  3         exited 1, 2s ago  512 KiB   -",
                "old-node    running     yes                                           1         -                 -         7",
            ]
        );
        assert_eq!(
            (ago(59), ago(600), ago(7200), ago(200_000)),
            ("59s".into(), "10m".into(), "2h".into(), "2d".into())
        );
        assert_eq!(binary_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn a_live_node_says_so_in_the_mode_column_and_older_nodes_are_not_live() {
        let body = |extra: &str| {
            format!(
                r#"{{"image_version": "0.1.0", "agent_version": "0.1.0", "slot": "a", "kernel": "6.1",
                    "hostname": "n1", "maintenance": true{extra}}}"#
            )
        };
        let row = |body: String| {
            let View::Table(t) = version(body.as_bytes()).unwrap().view else {
                panic!("not a table")
            };
            t.lines()[1].clone()
        };
        assert!(row(body(r#", "live": true"#)).contains(" maintenance, live "));
        let older = row(body(""));
        assert!(older.contains(" maintenance ") && !older.contains("live"), "{older}");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    fn change(path: &str, old: Option<&str>, new: Option<&str>) -> ConfigChange {
        ConfigChange {
            path: path.into(),
            old: old.map(Into::into),
            new: new.map(Into::into),
        }
    }

    #[test]
    fn the_apply_report_shows_the_diff_and_what_needs_a_reboot() {
        let r = ApplyResponse {
            changes: vec![
                change("machine.hostname", Some("\"a\""), Some("\"b\"")),
                change("kernel.args", None, Some("[\"quiet\"]")),
                change("api.ca_key", Some("***"), None),
            ],
            applied: vec!["hostname".into()],
            needs_reboot: vec!["kernel.args".into()],
            dry_run: false,
            confirm_within_secs: Some(60),
        };
        let text = apply_report(&r);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "3 changes:",
                "  ~ machine.hostname: \"a\" -> \"b\"",
                "  + kernel.args = [\"quiet\"]",
                "  - api.ca_key = ***",
                "applied live: hostname",
                "needs a reboot: kernel.args",
                "confirm within 60s with `nodectl apply-config --confirm`, or the node restores the previous config",
            ]
        );
        let dry = ApplyResponse {
            dry_run: true,
            confirm_within_secs: None,
            ..r
        };
        assert!(apply_report(&dry).ends_with("dry run: nothing was changed on the node"));
    }

    #[test]
    fn an_unready_node_is_shown_and_counts_as_a_failure() {
        let body = br#"{"ready":false,"checks":[{"name":"dhcp","ok":false,"detail":"no lease"}]}"#;
        let o = health(body).unwrap();
        assert!(!o.ok);
        let View::Table(t) = o.view else {
            panic!("a table")
        };
        assert_eq!(t.rows[1], ["dhcp", "FAIL", "no lease"]);
        assert_eq!(version(b"{}").unwrap_err().code, "bad-response");
    }
}

/// The kubeconfig as k3s wrote it, with its `server:` lines pointing at
/// `host` instead of the node's loopback address.
pub fn kubeconfig(body: &[u8], host: &str) -> Result<Outcome, Failure> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Failure::new("bad-response", format!("the kubeconfig is not UTF-8: {e}")))?;
    let rewritten = rewrite_server(text, host);
    Ok(Outcome::new(Value::String(rewritten.clone()), View::Text(rewritten.trim_end().to_string())))
}

/// `server: https://127.0.0.1:6443` → `server: https://<host>:6443`
/// (IPv6 hosts bracketed); other lines unchanged.
pub fn rewrite_server(text: &str, host: &str) -> String {
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        match trimmed.strip_prefix("server: https://") {
            Some(rest) => {
                let port_and_path = rest
                    .trim_end()
                    .strip_prefix("127.0.0.1")
                    .or_else(|| rest.trim_end().strip_prefix("[::1]"))
                    .or_else(|| rest.trim_end().strip_prefix("localhost"));
                match port_and_path {
                    Some(p) => {
                        out.push_str(&format!("{indent}server: https://{host}{p}"));
                        if line.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                    None => out.push_str(line),
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod kubeconfig_tests {
    use super::*;

    #[test]
    fn only_loopback_server_lines_are_rewritten() {
        let text = "clusters:\n- cluster:\n    server: https://127.0.0.1:6443\n  name: default\n    server: https://k8s.example:6443\n";
        let out = rewrite_server(text, "10.0.0.5");
        assert!(out.contains("    server: https://10.0.0.5:6443\n"), "{out}");
        assert!(out.contains("server: https://k8s.example:6443"), "{out}");
        assert_eq!(rewrite_server("server: https://[::1]:6443\n", "fd00::5"), "server: https://[fd00::5]:6443\n");
    }
}
