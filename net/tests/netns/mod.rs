//! Network-namespace fixtures for tests that need a real kernel.
//!
//! They need root and iproute2 (`ip netns`), as CI has; without them the
//! tests FAIL with a message saying so, they never skip. Every namespace
//! and process a test makes is removed by a Drop guard, on failure too;
//! namespaces left by a killed test run are removed by the next run.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const PREFIX: &str = "caisson-t-";

fn require_root_and_iproute2() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(
        euid,
        Some("0"),
        "this test makes network namespaces and needs root (CI runs as root)"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "this test needs iproute2's `ip` (Debian package iproute2)"
    );
}

/// Runs `ip ARGS`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces whose test process is gone.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        require_root_and_iproute2();
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -j` output, parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-j", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        let text = ip(&all);
        serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text })
            .unwrap_or_else(|e| panic!("ip {all:?}: {e}: {text}"))
    }

    /// Writes a sysctl in this namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(move || {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"))
        });
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// opens live here. A panic in `f` fails the caller.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                let file =
                    File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
                f()
            });
            handle
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// Runs the future made by `f` on a current_thread runtime (as the
    /// agent's) inside this namespace, failing after `limit`.
    pub fn block_on<F: Future>(&self, limit: Duration, f: impl FnOnce() -> F + Send) -> F::Output
    where
        F::Output: Send,
    {
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                tokio::time::timeout(limit, f())
                    .await
                    .unwrap_or_else(|_| panic!("the test did not finish within {limit:?}"))
            })
        })
    }

    /// Starts `program` inside this namespace; stopped when the guard drops.
    pub fn spawn(&self, program: &str, args: &[String], log: &Path) -> Daemon {
        let out = File::create(log).expect("daemon log file");
        let err = out.try_clone().expect("daemon log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        Daemon {
            child,
            log: log.to_path_buf(),
            program: program.to_string(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("could not delete network namespace {}: {out:?}", self.name);
        }
    }
}

/// A veth pair: `a_name` in `a`, `b_name` in `b`, both up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}

/// A process we started; killed (by its own handle) and reaped on drop.
/// Its output is printed when the test failed.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    program: String,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the process has already exited (a bad flag, say).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.program, self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.program, self.log());
        }
    }
}

/// The addresses on `dev` as `ip` sees them: (address/prefix, valid lifetime).
pub fn addresses(ns: &Netns, dev: &str) -> Vec<(String, u64)> {
    let v = ns.ip_json(&["address", "show", "dev", dev]);
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let net = format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]);
            out.push((net, a["valid_life_time"].as_u64().unwrap_or(0)));
        }
    }
    out
}

pub fn has_address(ns: &Netns, dev: &str, net: &str) -> bool {
    addresses(ns, dev).iter().any(|(a, _)| a == net)
}

/// The routes on `dev` as `ip` sees them, one line each:
/// "dst via gw proto P metric M".
pub fn routes(ns: &Netns, family: &str, dev: &str) -> Vec<String> {
    let v = ns.ip_json(&[family, "route", "show", "dev", dev]);
    let mut out: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let s = |k: &str| {
                r[k].as_str()
                    .map(String::from)
                    .unwrap_or_else(|| r[k].to_string())
            };
            let mut line = s("dst");
            if r.get("gateway").is_some() {
                line += &format!(" via {}", s("gateway"));
            }
            line += &format!(
                " proto {} metric {}",
                s("protocol"),
                r.get("metric").map_or("0".into(), |m| m.to_string())
            );
            line
        })
        .collect();
    out.sort();
    out
}

pub fn mtu(ns: &Netns, dev: &str) -> u64 {
    ns.ip_json(&["link", "show", "dev", dev])[0]["mtu"]
        .as_u64()
        .unwrap_or(0)
}

/// Polls `f` until it holds or `limit` passes.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
