//! The node's health, as `GET /v1/health` reports it: the config applied,
//! the API serving, STATE and DATA mounted. The upgrade issue's boot
//! blessing will gate on the same checks (plus containerd and k3s). A last,
//! informational check reports the agent's memory (always ok), which is
//! how benchmarks read it without a shell.

use caisson_api::types::{Health, HealthCheck};
use caisson_layout::paths::{DATA_MOUNT, STATE_MOUNT};

use crate::api::{ConfigState, Status};

fn check(name: &str, ok: bool, detail: String) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        ok,
        detail,
    }
}

pub fn checks(
    status: &Status,
    state_mounted: bool,
    data_mounted: bool,
    rss_kb: Option<u64>,
) -> Health {
    let config = match &status.config {
        ConfigState::Applied { source, errors } if errors.is_empty() => {
            check("config", true, format!("applied (from {source})"))
        }
        ConfigState::Applied { source, errors } => check(
            "config",
            false,
            format!(
                "from {source}, but {} setting(s) failed: {}",
                errors.len(),
                errors.join("; ")
            ),
        ),
        ConfigState::Maintenance { why } => {
            check("config", false, format!("maintenance mode: {why}"))
        }
    };
    let api = match &status.serving {
        Some(how) => check("api", true, format!("serving: {how}")),
        None => check("api", false, "not serving (see the console)".to_string()),
    };
    let mounted = |name: &str, ok: bool, at: &str| {
        let detail = if ok {
            format!("mounted on {at}")
        } else {
            format!("not mounted on {at}")
        };
        check(name, ok, detail)
    };
    let mut checks = vec![
        config,
        api,
        mounted("state", state_mounted, STATE_MOUNT),
        mounted("data", data_mounted, DATA_MOUNT),
    ];
    let ready = checks.iter().all(|c| c.ok);
    let memory = rss_kb.map_or_else(
        || "VmRSS unknown".to_string(),
        |kb| format!("VmRSS {kb} kB"),
    );
    checks.push(check("agent", true, memory));
    Health { ready, checks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisson_api::Mode;

    fn status(config: ConfigState, serving: Option<&str>) -> Status {
        Status {
            mode: Mode::Normal,
            hostname: "n".into(),
            config,
            redacted: None,
            api: None,
            serving: serving.map(str::to_string),
        }
    }

    #[test]
    fn ready_when_configured_serving_and_both_disks_are_mounted() {
        let applied = ConfigState::Applied {
            source: "STATE".into(),
            errors: vec![],
        };
        let h = checks(
            &status(applied.clone(), Some("mTLS on port 50443")),
            true,
            true,
            Some(5120),
        );
        assert!(h.ready);
        let names: Vec<&str> = h.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["config", "api", "state", "data", "agent"]);
        assert_eq!(h.checks[4].detail, "VmRSS 5120 kB");
        let h = checks(&status(applied, Some("x")), true, false, None);
        assert!(!h.ready);
        assert_eq!(h.checks[3].detail, "not mounted on /var");
    }

    #[test]
    fn maintenance_mode_and_failed_settings_are_not_ready() {
        let m = ConfigState::Maintenance {
            why: "no machine config".into(),
        };
        let h = checks(&status(m, Some("x")), true, true, None);
        assert!(!h.ready);
        assert_eq!(h.checks[0].detail, "maintenance mode: no machine config");
        let failed = ConfigState::Applied {
            source: "image".into(),
            errors: vec!["kernel.sysctls.\"x\": nope".into()],
        };
        let h = checks(&status(failed, None), true, true, None);
        assert!(!h.checks[0].ok && !h.checks[1].ok);
        assert!(h.checks[0].detail.contains("kernel.sysctls"));
    }
}
