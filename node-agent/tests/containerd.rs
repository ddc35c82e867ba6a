//! The containerd module against the real thing: containerd 1.6.20 and runc
//! from the pinned Debian packages in `artifacts/`, started by the test
//! with the config `caisson-runtime-config` renders (its paths moved under a
//! temporary directory). The image it runs is built by `caisson-oci` around
//! a static test program (`fixtures/ticker.rs`).
//!
//! A test binary of its own: the reaper calls waitpid(-1), which would
//! take other tests' children. The process is a child subreaper, standing
//! in for PID 1, so containerd's shims are reaped here too.
//!
//! Needs root (containerd, runc, overlayfs mounts), `dpkg-deb` and `rustc`.
//! Skips only when the artifacts have not been fetched (`cargo xtask fetch`).
//! Outside the temporary directory it touches what containerd 1.6 and its
//! runc shim hard-code: `/run/containerd/s/` (shim sockets, named by a hash
//! of our socket path) and `/run/containerd/runc/caisson/` (runc state), and
//! the `caisson/` cgroups while a container runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_config::{Container, Mount, RestartPolicy};
use caisson_oci::{FileSource, ImageFile, ImageSpec};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use node_agent::containerd::grpc::{self, Empty};
use node_agent::containerd::{
    cleanup_argv, container_id, cri_status_config, import_archive, list_images, run_argv, version,
    ContainerdError, ContainerdProbe, Ctr, ImportOutcome, RunOptions, SYSTEM_NAMESPACE,
};
use node_agent::reaper::{ExitStatus, Reaper, Spawned};
use node_agent::supervisor::Probe;

const IMAGE: &str = "localhost/caisson-test/ticker:1";
const IMAGE_GZ: &str = "localhost/caisson-test/ticker-gz:1";
const IMAGE_PLAIN: &str = "localhost/caisson-test/ticker-plain:1";

fn artifact(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with("_amd64.deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Prints how long each step took, so a slow host shows where.
fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    eprintln!("containerd test: {name}: {:.2?}", started.elapsed());
    out
}

fn run_to_end(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replace `from` in `text`, insisting that it is there: if the rendered
/// config stops naming a path, this test must be told.
fn moved(text: &str, from: &str, to: &Path) -> String {
    assert!(
        text.contains(from),
        "the rendered config no longer names {from}:\n{text}"
    );
    text.replace(&format!("\"{from}"), &format!("\"{}", to.display()))
}

/// Everything the test made: the temporary tree, the reaper, containerd.
struct Node {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    reaper: Arc<Reaper>,
    reaping: Arc<AtomicBool>,
    containerd: Option<Spawned>,
    ctr: Ctr,
}

impl Node {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn socket(&self) -> PathBuf {
        self.ctr.socket.clone()
    }

    /// Start `argv` with stdout and stderr into `out`.
    fn start(&self, argv: &[String], out: &Path) -> Spawned {
        let (program, args) = argv.split_first().unwrap();
        let log = File::create(out).unwrap();
        self.reaper
            .spawn(
                Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            )
            .unwrap()
    }

    fn wait(&self, spawned: Spawned, limit: Duration, out: &Path) -> (ExitStatus, String) {
        let status = self
            .rt
            .block_on(async { tokio::time::timeout(limit, spawned.exit).await })
            .unwrap_or_else(|_| {
                let _ = kill(Pid::from_raw(spawned.pid), Signal::SIGKILL);
                panic!(
                    "pid {} still running after {limit:?}; it printed:\n{}",
                    spawned.pid,
                    std::fs::read_to_string(out).unwrap_or_default()
                )
            })
            .unwrap();
        (status, std::fs::read_to_string(out).unwrap_or_default())
    }

    /// Run `argv` to its end.
    fn run(&self, argv: &[String], name: &str) -> (ExitStatus, String) {
        let out = self.path(&format!("{name}.out"));
        let spawned = self.start(argv, &out);
        self.wait(spawned, Duration::from_secs(60), &out)
    }

    /// Wait until the file `out` contains `text`.
    fn wait_for_output(&self, out: &Path, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = std::fs::read_to_string(out).unwrap_or_default();
            if now.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the output after 30 s:\n{now}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn containerd_log(&self) -> String {
        let log = std::fs::read_to_string(self.path("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "containerd test: containerd's last log lines:\n{}",
                self.containerd_log()
            );
        }
        if let Some(containerd) = self.containerd.take() {
            let _ = kill(Pid::from_raw(containerd.pid), Signal::SIGTERM);
            let rt = &self.rt;
            if rt
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), containerd.exit).await
                })
                .is_err()
            {
                let _ = kill(Pid::from_raw(containerd.pid), Signal::SIGKILL);
            }
        }
        self.reaping.store(false, Ordering::SeqCst);
        // The cgroups runc made for the `caisson` namespace, if empty now.
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(controller.path().join(SYSTEM_NAMESPACE));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(SYSTEM_NAMESPACE));
    }
}

/// Extract the packages, build the test program, render the config and
/// start containerd; `None` (after saying why) when the artifacts are missing.
fn start_node() -> Option<Node> {
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts");
    let (Some(containerd_deb), Some(runc_deb)) = (
        artifact(&artifacts, "containerd_"),
        artifact(&artifacts, "runc_"),
    ) else {
        eprintln!(
            "\n\
             ==================================================================\n\
             SKIPPED: no containerd or runc .deb in {} — the real-containerd\n\
             tests did not run. Fetch the pinned artifacts: cargo xtask fetch\n\
             ==================================================================\n",
            artifacts.display()
        );
        return None;
    };
    assert!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0,
        "the containerd tests need root (containerd, runc and overlayfs mounts); run them as root"
    );
    let dir = tempfile::Builder::new()
        .prefix("caisson-ctrd-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();

    // Everything that runs a child the std way happens before the reaper
    // starts: it would take their exit statuses.
    step("extract containerd and runc from the .debs", || {
        for deb in [&containerd_deb, &runc_deb] {
            run_to_end(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(deb)
                    .arg(root.join("pkg")),
            );
        }
    });
    step("build the static test program", || {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        run_to_end(
            Command::new(rustc)
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                    "-o",
                ])
                .arg(root.join("ticker"))
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ticker.rs")),
        );
    });

    let pkg = root.join("pkg");
    let socket = root.join("containerd.sock");
    // Only [containerd] matters here; no validation, so no PKI to make.
    let config: caisson_config::MachineConfig = toml::from_str(
        r#"
        version = 1
        [api]
        ca_cert = "unused"
        [containerd.registries."docker.io"]
        endpoints = ["http://127.0.0.1:5999"]
        username = "caisson-test-user"
        password = "caisson-test-password"
        "#,
    )
    .unwrap();
    let rendered = caisson_runtime_config::containerd_config(&config);
    let mut text = moved(
        &rendered,
        caisson_runtime_config::CONTAINERD_SOCKET,
        &socket,
    );
    for (from, to) in [
        (caisson_runtime_config::CONTAINERD_ROOT, root.join("root")),
        (caisson_runtime_config::CONTAINERD_STATE, root.join("state")),
        (caisson_runtime_config::RUNC_PATH, pkg.join("usr/sbin/runc")),
        (
            caisson_runtime_config::K3S_CNI_BIN_DIR,
            root.join("cni/bin"),
        ),
        (
            caisson_runtime_config::K3S_CNI_CONF_DIR,
            root.join("cni/conf"),
        ),
        (
            caisson_runtime_config::CONTAINERD_HOSTS_DIR,
            root.join("certs.d"),
        ),
    ] {
        text = moved(&text, from, &to);
    }
    std::fs::write(root.join("config.toml"), &text).unwrap();
    for file in caisson_runtime_config::registry_hosts(&config) {
        let rel = file
            .path
            .strip_prefix(&format!(
                "{}/",
                caisson_runtime_config::CONTAINERD_HOSTS_DIR
            ))
            .unwrap();
        let path = root.join("certs.d").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, file.contents).unwrap();
    }

    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let reaper = Arc::new(Reaper::new());
    let reaping = Arc::new(AtomicBool::new(true));
    {
        let (reaper, reaping) = (reaper.clone(), reaping.clone());
        std::thread::spawn(move || {
            while reaping.load(Ordering::SeqCst) {
                reaper.reap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut node = Node {
        ctr: Ctr {
            binary: pkg.join("usr/bin/ctr"),
            socket,
            runc: pkg.join("usr/sbin/runc"),
        },
        dir,
        rt,
        reaper,
        reaping,
        containerd: None,
    };
    let log = File::create(node.path("containerd.log")).unwrap();
    let containerd = node
        .reaper
        .spawn(
            Command::new(pkg.join("usr/bin/containerd"))
                .arg("--config")
                .arg(root.join("config.toml"))
                // The shim is found on PATH, next to containerd.
                .env(
                    "PATH",
                    format!(
                        "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
                        pkg.join("usr/bin").display(),
                        pkg.join("usr/sbin").display()
                    ),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        )
        .unwrap();
    node.containerd = Some(containerd);
    Some(node)
}

fn ticker_image(node: &Node, reference: &str) -> ImageSpec {
    ImageSpec {
        files: vec![ImageFile {
            path_in_image: "/ticker".into(),
            source: FileSource::Host(node.path("ticker")),
            mode: 0o755,
        }],
        entrypoint: vec!["/ticker".into()],
        cmd: vec!["--ticks".into(), "3".into()],
        env: vec!["PATH=/".into()],
        created: 1_700_000_000,
        ..ImageSpec::new(reference)
    }
}

fn ticker_container(node: &Node) -> Container {
    Container {
        name: "ticker".into(),
        image: IMAGE.into(),
        archive: Some("ticker.tar.zst".into()),
        args: vec![],
        env: [(
            "GREETING".to_string(),
            "hello from the machine config".to_string(),
        )]
        .into(),
        restart: RestartPolicy::Always,
        memory_max_mib: Some(64),
        mounts: vec![Mount {
            source: node.path("data").display().to_string(),
            destination: "/data".into(),
            readonly: true,
        }],
    }
}

#[test]
fn containerd_1_6_loads_our_config_imports_our_archives_and_runs_a_system_container() {
    let Some(node) = start_node() else { return };
    let socket = node.socket();

    // --- the API answers, and the probe says so ---
    let v = step("containerd answers Version", || {
        node.rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match version(&socket).await {
                    Ok(v) => return v,
                    Err(e) if Instant::now() > deadline => panic!("containerd never answered: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    });
    assert!(v.version.starts_with("1.6.20"), "{v:?}");
    let health = node
        .rt
        .block_on(ContainerdProbe::new(&socket).check())
        .unwrap();
    assert!(
        health.contains("containerd 1.6.20") && health.contains("answers on"),
        "{health}"
    );

    // --- containerd's own view of the config we rendered ---
    let cri = step("CRI Status (verbose) config", || {
        node.rt.block_on(cri_status_config(&socket))
    })
    .unwrap();
    assert_eq!(
        cri["registry"]["configPath"],
        node.path("certs.d").display().to_string(),
        "{cri:#}"
    );
    assert_eq!(
        cri["cni"]["binDir"],
        node.path("cni/bin").display().to_string(),
        "{cri:#}"
    );
    assert_eq!(
        cri["cni"]["confDir"],
        node.path("cni/conf").display().to_string(),
        "{cri:#}"
    );
    assert_eq!(cri["containerd"]["snapshotter"], "overlayfs", "{cri:#}");
    assert_eq!(
        cri["sandboxImage"],
        caisson_runtime_config::SANDBOX_IMAGE,
        "{cri:#}"
    );
    assert_eq!(
        cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"], false,
        "{cri:#}"
    );
    assert_eq!(
        cri["registry"]["configs"]["registry-1.docker.io"]["auth"]["username"], "caisson-test-user",
        "{cri:#}"
    );

    // --- gRPC errors carry the status ---
    let e = node
        .rt
        .block_on(grpc::unary::<_, Empty>(
            &socket,
            "/containerd.services.nothing.v1.Nothing/Get",
            None,
            &Empty {},
        ))
        .unwrap_err();
    assert_eq!(e.grpc_code(), Some(12), "{e}");
    assert!(
        e.to_string().contains("gRPC status 12 (Unimplemented)"),
        "{e}"
    );

    // --- archives: written twice the same, imported once ---
    let images = node.path("images");
    std::fs::create_dir_all(&images).unwrap();
    let (first, second) = step("write the OCI archive twice", || {
        let mut a = Vec::new();
        let mut b = Vec::new();
        caisson_oci::write_archive(&ticker_image(&node, IMAGE), &mut a).unwrap();
        caisson_oci::write_archive(&ticker_image(&node, IMAGE), &mut b).unwrap();
        (a, b)
    });
    assert!(
        first == second,
        "caisson-oci wrote two different archives for one spec"
    );
    std::fs::write(
        images.join("ticker.tar.zst"),
        zstd::encode_all(&first[..], 3).unwrap(),
    )
    .unwrap();
    let mut gz = Vec::new();
    caisson_oci::write_archive(&ticker_image(&node, IMAGE_GZ), &mut gz).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &gz).unwrap();
    std::fs::write(images.join("ticker.tar.gz"), encoder.finish().unwrap()).unwrap();
    let mut plain = File::create(images.join("ticker-plain.tar")).unwrap();
    caisson_oci::write_archive(&ticker_image(&node, IMAGE_PLAIN), &mut plain).unwrap();
    drop(plain);

    let state = node.path("imports");
    let import = |file: &str| {
        node.rt.block_on(import_archive(
            &node.reaper,
            &node.ctr,
            SYSTEM_NAMESPACE,
            &images.join(file),
            &state,
        ))
    };
    for file in ["ticker.tar.zst", "ticker.tar.gz", "ticker-plain.tar"] {
        let report = step(&format!("import {file}"), || import(file)).unwrap();
        assert_eq!(report.outcome, ImportOutcome::Imported, "{report:?}");
        assert!(report.marker.exists(), "{report:?}");
        assert!(
            report.marker.starts_with(state.join(SYSTEM_NAMESPACE))
                && report
                    .marker
                    .to_string_lossy()
                    .ends_with(&format!("{file}.{}.imported", report.sha256)),
            "{report:?}"
        );
    }
    let listed = node
        .rt
        .block_on(list_images(&socket, SYSTEM_NAMESPACE))
        .unwrap();
    assert_eq!(
        listed,
        [IMAGE_GZ, IMAGE_PLAIN, IMAGE],
        "the archives' names, exactly, sorted"
    );
    assert_eq!(
        node.rt.block_on(list_images(&socket, "default")).unwrap(),
        Vec::<String>::new()
    );
    let again = step("import ticker.tar.zst again", || import("ticker.tar.zst")).unwrap();
    assert_eq!(again.outcome, ImportOutcome::AlreadyImported);

    // A broken archive fails with ctr's words and leaves no marker.
    std::fs::write(
        images.join("broken.tar.zst"),
        zstd::encode_all(&b"not a tar archive"[..], 3).unwrap(),
    )
    .unwrap();
    let e = import("broken.tar.zst").unwrap_err();
    assert!(matches!(e, ContainerdError::Ctr { .. }), "{e}");
    eprintln!("containerd test: a broken archive: {e}");
    assert!(e.to_string().contains("images import"), "{e}");
    assert!(!std::fs::read_dir(state.join(SYSTEM_NAMESPACE))
        .unwrap()
        .any(|m| m
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("broken")));

    // --- the system container runs, sees its env and mount ---
    std::fs::create_dir_all(node.path("data")).unwrap();
    std::fs::write(node.path("data/msg"), "from the host\n").unwrap();
    let container = ticker_container(&node);
    let argv = run_argv(&node.ctr, &container, &RunOptions::default()).unwrap();
    let (status, out) = step("ctr run the ticker to its end", || node.run(&argv, "run1"));
    assert_eq!(status, ExitStatus::Exited(0), "{out}");
    for line in [
        r#"ticker: args ["--ticks", "3"]"#,
        "ticker: GREETING=hello from the machine config",
        "ticker: /data/msg says from the host",
        "ticker: /data writable false",
        "tick 3",
        "ticker: done",
    ] {
        assert!(
            out.contains(line),
            "no {line:?} in what ctr run printed:\n{out}"
        );
    }

    // --- SIGTERM to ctr reaches the container; its status comes back ---
    let long = Container {
        args: vec!["/ticker".into(), "--ticks".into(), "600".into()],
        ..container.clone()
    };
    let argv = run_argv(&node.ctr, &long, &RunOptions::default()).unwrap();
    let out = node.path("run2.out");
    let spawned = node.start(&argv, &out);
    node.wait_for_output(&out, "tick 1");
    // ctr's default spec mounts no cgroupfs in the container: look from the host.
    let limit = [
        "/sys/fs/cgroup/memory/caisson/ticker/memory.limit_in_bytes",
        "/sys/fs/cgroup/caisson/ticker/memory.max",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok());
    assert_eq!(
        limit.as_deref().map(str::trim),
        Some("67108864"),
        "the container's memory limit"
    );
    kill(Pid::from_raw(spawned.pid), Signal::SIGTERM).unwrap();
    let (status, printed) = step("SIGTERM to ctr run", || {
        node.wait(spawned, Duration::from_secs(30), &out)
    });
    assert_eq!(status, ExitStatus::Exited(42), "{printed}");
    assert!(printed.contains("ticker: SIGTERM after"), "{printed}");
    assert!(
        printed.contains(r#"ticker: args ["--ticks", "600"]"#),
        "{printed}"
    );

    // --- a ctr killed outright leaves the container; cleanup_argv removes it ---
    // (This run of the same id starting at all shows `--rm` removed the last.)
    let out = node.path("run3.out");
    let spawned = node.start(&argv, &out);
    node.wait_for_output(&out, "tick 1");
    kill(Pid::from_raw(spawned.pid), Signal::SIGKILL).unwrap();
    let (status, _) = node.wait(spawned, Duration::from_secs(10), &out);
    assert!(matches!(status, ExitStatus::Signaled { signal: 9, .. }));
    let (status, refused) = node.run(&argv, "run4");
    assert!(
        !status.success() && refused.contains("already exists"),
        "{status}: {refused}"
    );
    step("clean up the stale container", || {
        for cleanup in cleanup_argv(&node.ctr, &container_id(&container)) {
            let (status, said) = node.run(&cleanup, "cleanup");
            assert!(status.success(), "{cleanup:?} {status}: {said}");
        }
    });
    let (status, out) = node.run(
        &run_argv(&node.ctr, &container, &RunOptions::default()).unwrap(),
        "run5",
    );
    assert_eq!(
        status,
        ExitStatus::Exited(0),
        "after the cleanup the same id runs again: {out}"
    );
    // Nothing left behind: a second cleanup finds nothing to remove.
    for cleanup in cleanup_argv(&node.ctr, &container_id(&container)) {
        let (status, said) = node.run(&cleanup, "cleanup-again");
        assert!(
            !status.success() && said.contains("not found"),
            "{status}: {said}"
        );
    }

    // --- words after the id replace the image's entrypoint too ---
    let flags_only = Container {
        args: vec!["--ticks".into(), "1".into()],
        ..container.clone()
    };
    let (status, out) = node.run(
        &run_argv(&node.ctr, &flags_only, &RunOptions::default()).unwrap(),
        "run6",
    );
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(r#"exec: "--ticks": executable file not found"#),
        "{out}"
    );
}
