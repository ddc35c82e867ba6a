//! Every endpoint, its HTTP route, and the one static table that says which
//! roles may call it. The match arms are exhaustive on purpose: adding an
//! endpoint does not compile until someone decides who may call it.

use caisson_pki::Role;

/// Whether the node has a config (normal, mTLS) or waits for one
/// (maintenance: throwaway certificate, no client certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Maintenance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Version,
    Health,
    ConfigGet,
    ConfigApply,
    ConfigConfirm,
    ServicesList,
    ServiceRestart,
    Logs,
    Dmesg,
    Reboot,
    Shutdown,
    Reset,
    Audit,
    Upgrade,
    UpgradeFetch,
    Rollback,
    Kubeconfig,
}

use Role::{Admin, Operator, Reader};

impl Endpoint {
    pub const ALL: [Endpoint; 17] = [
        Endpoint::Version,
        Endpoint::Health,
        Endpoint::ConfigGet,
        Endpoint::ConfigApply,
        Endpoint::ConfigConfirm,
        Endpoint::ServicesList,
        Endpoint::ServiceRestart,
        Endpoint::Logs,
        Endpoint::Dmesg,
        Endpoint::Reboot,
        Endpoint::Shutdown,
        Endpoint::Reset,
        Endpoint::Audit,
        Endpoint::Upgrade,
        Endpoint::UpgradeFetch,
        Endpoint::Rollback,
        Endpoint::Kubeconfig,
    ];

    /// The role table.
    pub fn allowed_roles(self) -> &'static [Role] {
        match self {
            Endpoint::Version | Endpoint::Health => &[Admin, Operator, Reader],
            Endpoint::ConfigGet => &[Admin, Operator, Reader],
            Endpoint::ConfigApply | Endpoint::ConfigConfirm => &[Admin],
            Endpoint::ServicesList | Endpoint::Logs | Endpoint::Dmesg => &[Admin, Operator, Reader],
            Endpoint::ServiceRestart | Endpoint::Reboot | Endpoint::Shutdown => &[Admin, Operator],
            Endpoint::Reset => &[Admin],
            Endpoint::Audit => &[Admin, Operator],
            // The bundle's signature decides what may be installed; the
            // role decides who may start it.
            Endpoint::Upgrade | Endpoint::UpgradeFetch | Endpoint::Rollback => &[Admin, Operator],
            // The cluster's admin credentials.
            Endpoint::Kubeconfig => &[Admin],
        }
    }

    /// What maintenance mode serves, to anyone who can reach it.
    pub fn allowed_in_maintenance(self) -> bool {
        match self {
            Endpoint::Version | Endpoint::Health | Endpoint::ConfigApply => true,
            Endpoint::ConfigGet
            | Endpoint::ConfigConfirm
            | Endpoint::ServicesList
            | Endpoint::ServiceRestart
            | Endpoint::Logs
            | Endpoint::Dmesg
            | Endpoint::Reboot
            | Endpoint::Shutdown
            | Endpoint::Reset
            | Endpoint::Audit
            | Endpoint::Upgrade
            | Endpoint::UpgradeFetch
            | Endpoint::Rollback
            | Endpoint::Kubeconfig => false,
        }
    }

    /// Mutating calls are always audited; reads are audited only when refused.
    pub fn is_mutating(self) -> bool {
        match self {
            Endpoint::ConfigApply
            | Endpoint::ConfigConfirm
            | Endpoint::ServiceRestart
            | Endpoint::Reboot
            | Endpoint::Shutdown
            | Endpoint::Reset
            | Endpoint::Upgrade
            | Endpoint::UpgradeFetch
            | Endpoint::Rollback => true,
            // Not mutating, but it hands out credentials: always audited.
            Endpoint::Kubeconfig => true,
            Endpoint::Version
            | Endpoint::Health
            | Endpoint::ConfigGet
            | Endpoint::ServicesList
            | Endpoint::Logs
            | Endpoint::Dmesg
            | Endpoint::Audit => false,
        }
    }

    /// Method and path, as documented in docs/api.md.
    pub fn route(self) -> (&'static str, &'static str) {
        match self {
            Endpoint::Version => ("GET", "/v1/version"),
            Endpoint::Health => ("GET", "/v1/health"),
            Endpoint::ConfigGet => ("GET", "/v1/config"),
            Endpoint::ConfigApply => ("POST", "/v1/config"),
            Endpoint::ConfigConfirm => ("POST", "/v1/config/confirm"),
            Endpoint::ServicesList => ("GET", "/v1/services"),
            Endpoint::ServiceRestart => ("POST", "/v1/services/{name}/restart"),
            Endpoint::Logs => ("GET", "/v1/logs/{source}"),
            Endpoint::Dmesg => ("GET", "/v1/dmesg"),
            Endpoint::Reboot => ("POST", "/v1/reboot"),
            Endpoint::Shutdown => ("POST", "/v1/shutdown"),
            Endpoint::Reset => ("POST", "/v1/reset"),
            Endpoint::Audit => ("GET", "/v1/audit"),
            Endpoint::Upgrade => ("POST", "/v1/upgrade"),
            Endpoint::UpgradeFetch => ("POST", "/v1/upgrade/url"),
            Endpoint::Rollback => ("POST", "/v1/rollback"),
            Endpoint::Kubeconfig => ("GET", "/v1/kubeconfig"),
        }
    }

    /// Stable name used in the audit log and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Version => "version",
            Endpoint::Health => "health",
            Endpoint::ConfigGet => "config.get",
            Endpoint::ConfigApply => "config.apply",
            Endpoint::ConfigConfirm => "config.confirm",
            Endpoint::ServicesList => "services.list",
            Endpoint::ServiceRestart => "services.restart",
            Endpoint::Logs => "logs",
            Endpoint::Dmesg => "dmesg",
            Endpoint::Reboot => "reboot",
            Endpoint::Shutdown => "shutdown",
            Endpoint::Reset => "reset",
            Endpoint::Audit => "audit",
            Endpoint::Upgrade => "upgrade",
            Endpoint::UpgradeFetch => "upgrade.url",
            Endpoint::Rollback => "rollback",
            Endpoint::Kubeconfig => "kubeconfig",
        }
    }

    pub fn allows(self, role: Role) -> bool {
        self.allowed_roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_cannot_mutate_anything() {
        for e in Endpoint::ALL {
            if e.is_mutating() {
                assert!(!e.allows(Reader), "{} lets readers mutate", e.name());
            }
        }
    }

    #[test]
    fn admins_can_call_everything_and_only_admins_touch_config_and_reset() {
        for e in Endpoint::ALL {
            assert!(e.allows(Admin), "{}", e.name());
        }
        for e in [Endpoint::ConfigApply, Endpoint::ConfigConfirm, Endpoint::Reset] {
            assert_eq!(e.allowed_roles(), &[Admin], "{}", e.name());
        }
        assert!(Endpoint::Reboot.allows(Operator));
        assert!(!Endpoint::Reboot.allows(Reader));
    }

    #[test]
    fn maintenance_serves_only_version_health_and_apply() {
        let open: Vec<_> = Endpoint::ALL.into_iter().filter(|e| e.allowed_in_maintenance()).collect();
        assert_eq!(open, vec![Endpoint::Version, Endpoint::Health, Endpoint::ConfigApply]);
    }

    #[test]
    fn routes_and_names_are_unique() {
        let mut routes: Vec<_> = Endpoint::ALL.iter().map(|e| e.route()).collect();
        routes.sort();
        routes.dedup();
        assert_eq!(routes.len(), Endpoint::ALL.len());
        let mut names: Vec<_> = Endpoint::ALL.iter().map(|e| e.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Endpoint::ALL.len());
    }
}
