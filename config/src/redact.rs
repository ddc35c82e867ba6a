//! What readers see: the config with secrets masked, and the difference
//! between two configs, also masked.

use std::collections::BTreeMap;

use toml::Value;

use crate::schema::MachineConfig;
use crate::secret::{Secret, MASK};

/// Key paths of secrets. `[]` stands for any array index and `*` for any one
/// map key. Adding a `Secret` field to the schema means adding its path here
/// and to [`secrets_mut`]; a test checks that every one is masked.
pub const SECRET_PATHS: &[&str] = &[
    "api.ca_key",
    "api.node_key",
    "kubernetes.token",
    "containerd.registries.*.password",
];

/// Whether a key path as [`diff`] renders it (`containerd.registries."docker.io".password`)
/// names a secret.
pub fn is_secret_path(path: &str) -> bool {
    let segments = segments(path);
    SECRET_PATHS.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.split('.').collect();
        pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(&segments)
                .all(|(p, s)| *p == s || (*p == "*" && !s.ends_with("[]")))
    })
}

fn is_secret(path: &str) -> bool {
    is_secret_path(path)
}

/// `a."b.c"[3].d` → `["a", "b.c[]", "d"]`: keys unquoted, indices as `[]`.
fn segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => current.extend(chars.by_ref().take_while(|&c| c != '"')),
            '[' => {
                chars.by_ref().take_while(|&c| c != ']').for_each(drop);
                current.push_str("[]");
            }
            '.' => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !path.is_empty() {
        out.push(current);
    }
    out
}

/// Every secret the config holds, in [`SECRET_PATHS`] order.
pub fn secrets(config: &MachineConfig) -> Vec<&Secret> {
    let mut out: Vec<&Secret> = [&config.api.ca_key, &config.api.node_key]
        .into_iter()
        .flatten()
        .collect();
    out.extend(config.kubernetes.as_ref().and_then(|k| k.token.as_ref()));
    out.extend(
        config
            .containerd
            .registries
            .values()
            .filter_map(|r| r.password.as_ref()),
    );
    out
}

/// Every secret the config holds, to replace (fuzzing, tests).
pub fn secrets_mut(config: &mut MachineConfig) -> Vec<&mut Secret> {
    let mut out: Vec<&mut Secret> = [&mut config.api.ca_key, &mut config.api.node_key]
        .into_iter()
        .flatten()
        .collect();
    out.extend(config.kubernetes.as_mut().and_then(|k| k.token.as_mut()));
    out.extend(
        config
            .containerd
            .registries
            .values_mut()
            .filter_map(|r| r.password.as_mut()),
    );
    out
}

fn to_value(config: &MachineConfig) -> Value {
    Value::try_from(config).unwrap_or(Value::Table(Default::default()))
}

fn mask(value: &mut Value, path: &str) {
    if is_secret(path) {
        *value = Value::String(MASK.to_string());
        return;
    }
    match value {
        Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                mask(v, &join(path, k));
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                mask(v, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// The config as TOML with every secret replaced by `***`.
pub fn redacted_toml(config: &MachineConfig) -> String {
    let mut v = to_value(config);
    mask(&mut v, "");
    toml::to_string_pretty(&v).unwrap_or_default()
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    /// Rendered old value; None when the key is new.
    pub old: Option<String>,
    /// Rendered new value; None when the key is removed.
    pub new: Option<String>,
}

/// `a.b` plus key `c.d` gives `a.b."c.d"`: a key that is not a TOML bare key
/// (dotted sysctl names, `host:port`, label keys) is quoted, so it stays one key.
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn flatten(value: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        // Empty tables are absent keys, not values.
        Value::Table(t) => {
            for (k, v) in t {
                flatten(v, join(&path, k), out);
            }
        }
        Value::Array(a) if a.iter().any(|v| v.is_table()) => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, format!("{path}[{i}]"), out);
            }
        }
        v => {
            let rendered = if is_secret(&path) {
                MASK.to_string()
            } else {
                v.to_string()
            };
            out.insert(path, rendered);
        }
    }
}

/// Leaf-level differences from `old` to `new`, secrets masked (a changed
/// secret shows as `*** → ***`, so readers learn that it changed, not what).
pub fn diff(old: &MachineConfig, new: &MachineConfig) -> Vec<Change> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    flatten(&to_value(old), String::new(), &mut a);
    let mut old_secrets = BTreeMap::new();
    let mut new_secrets = BTreeMap::new();
    secret_values(&to_value(old), String::new(), &mut old_secrets);
    secret_values(&to_value(new), String::new(), &mut new_secrets);
    flatten(&to_value(new), String::new(), &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (o, n) = (a.get(k), b.get(k));
            let changed = if is_secret(k) {
                old_secrets.get(k) != new_secrets.get(k)
            } else {
                o != n
            };
            changed.then(|| Change {
                path: k.clone(),
                old: o.cloned(),
                new: n.cloned(),
            })
        })
        .collect()
}

fn secret_values(value: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                secret_values(v, join(&path, k), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                secret_values(v, format!("{path}[{i}]"), out);
            }
        }
        v if is_secret(&path) => {
            out.insert(path, v.to_string());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_unquoted_segments_with_index_wildcards() {
        assert_eq!(segments("a[3].b[10].c"), ["a[]", "b[]", "c"]);
        assert_eq!(
            segments("x.\"docker.io\".password"),
            ["x", "docker.io", "password"]
        );
        assert_eq!(
            segments("r.\"[2001:db8::1]:5000\".p"),
            ["r", "[2001:db8::1]:5000", "p"]
        );
        assert!(segments("").is_empty());
    }

    #[test]
    fn secret_paths_match_with_map_key_wildcards() {
        assert!(is_secret("api.ca_key"));
        assert!(!is_secret("api.ca_cert"));
        assert!(is_secret("kubernetes.token"));
        assert!(is_secret(
            "containerd.registries.\"registry.example:5000\".password"
        ));
        assert!(is_secret("containerd.registries.localhost.password"));
        assert!(!is_secret("containerd.registries.\"docker.io\".username"));
        assert!(!is_secret("containerd.registries.password"));
    }
}
