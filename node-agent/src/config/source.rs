//! Where the machine config comes from at boot. First match wins:
//!
//! 1. STATE (`config/current.toml`), written by the API;
//! 2. the image (`/usr/lib/caisson/config.toml`, put there by
//!    `image-builder build --config FILE`);
//! 3. to 8. the platform's sources, in [`crate::platform`]'s order: the
//!    kernel command line's `caisson.config=` URL, an OpenStack config
//!    drive, the metadata service, VMware guestinfo, a NoCloud seed,
//!    QEMU's fw_cfg. A config found there is saved on STATE first, so it
//!    is read there only until a config is on STATE;
//! 9. none: maintenance mode.
//!
//! A config that does not parse or validate stops the search: the node
//! stays in maintenance mode rather than boot half-configured or with a
//! config the operator did not choose.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use caisson_config::{ConfigErrors, MachineConfig};

use crate::platform::PlatformSource;
use crate::store::ConfigStore;

/// The config the image builder embeds.
pub use caisson_layout::paths::EMBEDDED_CONFIG;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    State(PathBuf),
    Image(PathBuf),
    /// Found on a platform source this boot (and saved on STATE).
    Platform(PlatformSource),
    /// Applied through the API during this boot.
    Api,
}

impl fmt::Display for Source {
    /// `STATE (/run/caisson/state/config/current.toml)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::State(p) => write!(f, "STATE ({})", p.display()),
            Source::Image(p) => write!(f, "the image ({})", p.display()),
            Source::Platform(p) => write!(f, "{p}"),
            Source::Api => f.write_str("the API"),
        }
    }
}

impl Source {
    /// `STATE`, `image`, `API` or the platform source's (`config-drive`,
    /// `nocloud`, …): the short form for console lines and health.
    pub fn short(&self) -> &'static str {
        match self {
            Source::State(_) => "STATE",
            Source::Image(_) => "image",
            Source::Platform(p) => p.kind.short(),
            Source::Api => "API",
        }
    }
}

#[derive(Debug)]
pub enum BootConfig {
    Found {
        source: Source,
        config: Box<MachineConfig>,
        text: String,
    },
    /// Present but wrong: every error names the file, line, column and key.
    Invalid {
        source: Source,
        errors: ConfigErrors,
    },
    /// Present but unreadable (I/O error).
    Unreadable { source: Source, error: String },
    /// Nowhere: maintenance mode.
    None,
}

/// Look for the boot config. `store` is `None` when STATE is not mounted.
pub fn find(store: Option<&ConfigStore>, embedded: &Path) -> BootConfig {
    if let Some(store) = store {
        let source = Source::State(store.current_path());
        match store.current() {
            Ok(Some(text)) => return check(source, &store.current_path(), text),
            Ok(None) => {}
            Err(e) => {
                return BootConfig::Unreadable {
                    source,
                    error: e.to_string(),
                }
            }
        }
    }
    let source = Source::Image(embedded.to_path_buf());
    match std::fs::read_to_string(embedded) {
        Ok(text) => check(source, embedded, text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BootConfig::None,
        Err(e) => BootConfig::Unreadable {
            source,
            error: format!("read {}: {e}", embedded.display()),
        },
    }
}

fn check(source: Source, path: &Path, text: String) -> BootConfig {
    // Errors then read `/run/caisson/state/config/current.toml:3:12: machine.hostname: …`.
    match caisson_config::parse(&path.display().to_string(), &text) {
        Ok(config) => BootConfig::Found {
            source,
            config: Box::new(config),
            text,
        },
        Err(errors) => BootConfig::Invalid { source, errors },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    pub const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----";

    fn config(hostname: &str) -> String {
        format!(
            "version = 1\n[machine]\nhostname = \"{hostname}\"\n[api]\nca_cert = \"\"\"{CA}\"\"\"\nca_key = \"\"\"{KEY}\"\"\"\n"
        )
    }

    #[test]
    fn state_wins_over_the_image_and_the_image_over_maintenance() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path());
        let embedded = dir.path().join("embedded.toml");
        assert!(matches!(find(Some(&store), &embedded), BootConfig::None));

        std::fs::write(&embedded, config("from-image")).unwrap();
        let BootConfig::Found {
            source, config: c, ..
        } = find(Some(&store), &embedded)
        else {
            panic!("embedded config not found")
        };
        assert_eq!(source, Source::Image(embedded.clone()));
        assert_eq!(c.machine.hostname.as_deref(), Some("from-image"));

        store.commit(&config("from-state"), None).unwrap();
        let BootConfig::Found {
            source, config: c, ..
        } = find(Some(&store), &embedded)
        else {
            panic!("STATE config not found")
        };
        assert_eq!(source.short(), "STATE");
        assert_eq!(c.machine.hostname.as_deref(), Some("from-state"));

        // STATE not mounted: the image's.
        let BootConfig::Found { source, .. } = find(None, &embedded) else {
            panic!()
        };
        assert_eq!(source.short(), "image");
    }

    #[test]
    fn an_invalid_config_stops_the_search_and_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path());
        let embedded = dir.path().join("embedded.toml");
        std::fs::write(&embedded, config("fine")).unwrap();
        store.commit(&config("not_valid!"), None).unwrap();
        let BootConfig::Invalid { source, errors } = find(Some(&store), &embedded) else {
            panic!("expected the STATE config to be refused")
        };
        assert_eq!(source.short(), "STATE");
        let text = errors.to_string();
        let path = store.current_path().display().to_string();
        assert!(
            text.starts_with(&format!("{path}:3:12: machine.hostname: ")),
            "{text}"
        );
    }
}
