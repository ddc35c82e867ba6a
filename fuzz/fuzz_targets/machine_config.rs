//! Untrusted machine configs: from `nodectl apply`, the config store and the
//! image builder. Parsing must never panic, and what readers see must never
//! carry a secret.

#![no_main]

use caisson_config::{redact, MachineConfig, Secret};
use libfuzzer_sys::fuzz_target;

/// What `redact` shows instead of a secret (`caisson_config::secret::MASK`).
const MASK: &str = "***";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = caisson_config::parse("fuzz", text) else {
        return;
    };
    let shown = redact::redacted_toml(&config);

    // The redacted text must not depend on secret values at all...
    let decoy = with_secrets(&config, "decoy");
    assert_eq!(
        shown,
        redact::redacted_toml(&decoy),
        "redacted_toml depends on a secret value"
    );

    // ...so no secret value appears in it, unless the same text is there anyway.
    let baseline = redact::redacted_toml(&with_secrets(&config, ""));
    for secret in secrets(&config) {
        if !secret.is_empty() && !baseline.contains(secret) {
            assert!(
                !shown.contains(secret),
                "redacted_toml contains a secret value"
            );
        }
    }

    // Readers can parse what they are shown: it is the config, secrets masked.
    let reread: MachineConfig =
        toml::from_str(&shown).expect("redacted_toml is not a machine config");
    assert_eq!(
        reread,
        with_secrets(&config, MASK),
        "redacted_toml lost or changed a value"
    );

    // A diff between configs that differ only in secrets names only secrets,
    // and shows them masked.
    for change in redact::diff(&config, &decoy) {
        assert!(
            redact::is_secret_path(&change.path),
            "diff shows non-secret {}",
            change.path
        );
        for v in [&change.old, &change.new].into_iter().flatten() {
            assert_eq!(v, MASK, "diff shows a secret value at {}", change.path);
        }
    }
    assert!(
        redact::diff(&config, &config).is_empty(),
        "a config differs from itself"
    );
});

fn secrets(c: &MachineConfig) -> impl Iterator<Item = &str> {
    redact::secrets(c).into_iter().map(Secret::expose)
}

/// `c` with every secret that is set replaced by `value`.
fn with_secrets(c: &MachineConfig, value: &str) -> MachineConfig {
    let mut c = c.clone();
    for s in redact::secrets_mut(&mut c) {
        *s = Secret::new(value);
    }
    c
}
