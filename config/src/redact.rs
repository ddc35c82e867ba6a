//! What readers may see: the config with secrets masked, and the difference
//! between two configs, also masked.

use std::collections::BTreeMap;

use toml::Value;

use crate::schema::MachineConfig;
use crate::secret::MASK;

/// Key paths of secrets. `[]` stands for any array index. Adding a `Secret`
/// field to the schema means adding its path here; a test checks the known
/// ones.
pub const SECRET_PATHS: &[&str] = &["api.ca_key", "api.node_key"];

fn is_secret(path: &str) -> bool {
    let generic = strip_indices(path);
    SECRET_PATHS.iter().any(|s| *s == generic)
}

fn strip_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
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
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                mask(v, &child);
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

/// `a.b` plus key `c.d` gives `a.b."c.d"`, so dotted sysctl names stay one key.
fn join(path: &str, key: &str) -> String {
    let key = if key.contains('.') { format!("\"{key}\"") } else { key.to_string() };
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
            let rendered = if is_secret(&path) { MASK.to_string() } else { v.to_string() };
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
            let changed = if is_secret(k) { old_secrets.get(k) != new_secrets.get(k) } else { o != n };
            changed.then(|| Change { path: k.clone(), old: o.cloned(), new: n.cloned() })
        })
        .collect()
}

fn secret_values(value: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                secret_values(v, child, out);
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
    fn index_wildcards_match_secret_paths() {
        assert_eq!(strip_indices("a[3].b[10].c"), "a[].b[].c");
        assert!(is_secret("api.ca_key"));
        assert!(!is_secret("api.ca_cert"));
    }
}
