//! What is rendered for each example in `machine-configs/` is checked in
//! under `tests/golden/<example>/`: the files at their node paths, and
//! `MANIFEST` with each file's mode and k3s's argv.
//!
//! After an intended change, rewrite them with
//! `UPDATE_GOLDEN=1 cargo test -p caisson-runtime-config --test golden`
//! and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caisson_config::MachineConfig;
use caisson_runtime_config::{files, k3s_argv, NodeFacts};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../machine-configs")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `three-node/node-1.toml` → `three-node-node-1`, for every example config.
fn examples() -> Vec<(String, MachineConfig)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with("src") && !path.ends_with("tests") {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("Cargo.toml")
            {
                out.push(path);
            }
        }
    }
    let root = examples_dir();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let name = p
                .strip_prefix(&root)
                .unwrap()
                .with_extension("")
                .display()
                .to_string()
                .replace('/', "-");
            let text = std::fs::read_to_string(p).unwrap();
            let config = caisson_config::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
            (name, config)
        })
        .collect()
}

/// What the agent would know: the configured host name and static addresses.
fn facts(c: &MachineConfig) -> NodeFacts {
    NodeFacts {
        hostname: c
            .machine
            .hostname
            .clone()
            .unwrap_or_else(|| "dhcp-node".into()),
        addresses: c
            .network
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(|a| a.addr()))
            .collect(),
    }
}

/// Relative path → contents, as they should be on disk.
fn rendered(c: &MachineConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut manifest = String::from("# mode path, in write order; then k3s's argv\n");
    for f in files(c, &facts(c)) {
        manifest.push_str(&format!("{:04o} {}\n", f.mode, f.path));
        out.insert(f.path.trim_start_matches('/').to_string(), f.contents);
    }
    match k3s_argv(c) {
        Some(argv) => manifest.push_str(&format!("argv: k3s {}\n", argv.join(" "))),
        None => manifest.push_str("argv: (no [kubernetes] section, no k3s)\n"),
    }
    out.insert("MANIFEST".to_string(), manifest);
    out
}

fn files_under(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, base, out);
        } else {
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            out.insert(rel, std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_example_renders_as_checked_in() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let examples = examples();
    assert!(
        examples.iter().any(|(n, _)| n == "airgap-mirror"),
        "examples not found"
    );
    let mut stale = Vec::new();
    for (name, config) in &examples {
        let dir = golden_dir().join(name);
        let want = rendered(config);
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            for (rel, contents) in &want {
                let path = dir.join(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, contents).unwrap();
            }
            continue;
        }
        let mut have = BTreeMap::new();
        files_under(&dir, &dir, &mut have);
        for (rel, contents) in &want {
            match have.get(rel) {
                Some(h) if h == contents => {}
                Some(h) => stale.push(format!(
                    "{name}/{rel} differs:\n--- checked in\n{h}\n--- rendered\n{contents}"
                )),
                None => stale.push(format!("{name}/{rel} is missing")),
            }
        }
        for rel in have.keys().filter(|r| !want.contains_key(*r)) {
            stale.push(format!("{name}/{rel} is no longer rendered"));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n\nIf the change is intended: UPDATE_GOLDEN=1 cargo test -p caisson-runtime-config --test golden",
        stale.join("\n\n")
    );
}
