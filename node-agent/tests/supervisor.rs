//! The service supervisor with real processes. A test binary of its own:
//! its reaper calls waitpid(-1), which would take other tests' children.
//! One reaper serves every test here, standing in for PID 1 (the process
//! is a child subreaper, so orphans come to it too).

mod supervisor {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, LazyLock};
    use std::time::{Duration, Instant};

    use futures_util::future::BoxFuture;
    use node_agent::reaper::{ExitStatus, Reaper};
    use node_agent::supervisor::{
        Backoff, Condition, Conditions, Health, LogLimits, Probe, Restart, ServiceSpec,
        StopOutcome, Supervisor, SupervisorError,
    };
    use tokio::sync::watch;

    static REAPER: LazyLock<Arc<Reaper>> = LazyLock::new(|| {
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let reaper = Arc::new(Reaper::new());
        let background = reaper.clone();
        std::thread::spawn(move || loop {
            background.reap();
            std::thread::sleep(Duration::from_millis(5));
        });
        reaper
    });

    struct Env {
        dir: tempfile::TempDir,
        conditions: watch::Sender<Conditions>,
    }

    impl Env {
        fn new(conditions: Conditions) -> Env {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("cgroup")).unwrap();
            Env {
                dir,
                conditions: watch::Sender::new(conditions),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn supervisor(&self) -> Supervisor {
            Supervisor::new(
                REAPER.clone(),
                self.path("cgroup"),
                self.path("logs"),
                self.conditions.subscribe(),
            )
        }

        fn start(&self, specs: Vec<ServiceSpec>) -> Arc<Supervisor> {
            self.supervisor().start(specs).unwrap()
        }
    }

    const FAST: Backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        reset_after: Duration::from_secs(60),
    };

    fn sh(name: &str, script: &str) -> ServiceSpec {
        ServiceSpec {
            args: vec!["-c".into(), script.into()],
            backoff: FAST,
            stop_timeout: Duration::from_secs(2),
            ..ServiceSpec::new(name, "/bin/sh")
        }
    }

    fn with_env(mut spec: ServiceSpec, key: &str, value: &Path) -> ServiceSpec {
        spec.env.insert(key.into(), value.display().to_string());
        spec
    }

    /// Poll `check` until it holds; fail with `what` and the last status.
    async fn until(
        sup: &Supervisor,
        what: &str,
        limit: Duration,
        check: impl Fn(&Supervisor) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while !check(sup) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                sup.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn state(sup: &Supervisor, name: &str) -> String {
        sup.status_of(name).unwrap().state
    }

    fn ring(sup: &Supervisor, name: &str) -> Vec<String> {
        sup.logs(name)
            .unwrap()
            .tail(10_000)
            .iter()
            .map(|l| l.to_string())
            .collect()
    }

    fn gone(pid: i32) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    }

    /// Healthy while its flag is set.
    struct Flag(Arc<AtomicBool>);

    impl Probe for Flag {
        fn check(&self) -> BoxFuture<'_, Result<String, String>> {
            let up = self.0.load(Ordering::SeqCst);
            Box::pin(async move {
                if up {
                    Ok("flag up".into())
                } else {
                    Err("flag down".into())
                }
            })
        }
    }

    /// Never answers.
    struct Hung;

    impl Probe for Hung {
        fn check(&self) -> BoxFuture<'_, Result<String, String>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_reaches_the_ring_and_the_log_file_from_inside_the_cgroup() {
        let env = Env::new(Conditions::all());
        let spec = ServiceSpec {
            memory_max: Some(64 << 20),
            ..sh(
                "chatty",
                "echo hello; echo oops >&2; printf 'no newline'; exec sleep 100",
            )
        };
        let sup = env.start(vec![spec]);
        until(&sup, "the output", Duration::from_secs(5), |s| {
            ring(s, "chatty").iter().any(|l| l == "oops")
        })
        .await;
        let lines = ring(&sup, "chatty");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("-- node-agent: started /bin/sh (pid ")),
            "{lines:?}"
        );
        assert!(
            lines.ends_with(&["hello".into(), "oops".into()]),
            "{lines:?}"
        );
        let file = env.path("logs/chatty.log");
        until(&sup, "the log file", Duration::from_secs(5), |_| {
            std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with("hello\noops\n"))
        })
        .await;

        // The child joined its group before exec ("0": itself), with its limit.
        let group = env.path("cgroup/caisson.slice/chatty");
        assert_eq!(
            std::fs::read_to_string(group.join("cgroup.procs")).unwrap(),
            "0"
        );
        assert_eq!(
            std::fs::read_to_string(group.join("memory.max")).unwrap(),
            "67108864"
        );
        std::fs::write(group.join("memory.current"), "4096\n").unwrap();
        let status = sup.status_of("chatty").unwrap();
        assert_eq!(status.memory_bytes, Some(4096));
        assert_eq!(
            (status.state.as_str(), status.healthy, status.restarts),
            ("running", true, 0)
        );
        assert!(status.pid.is_some());
        assert_eq!(status.log_lines_dropped, 0);
        sup.stop_all().await;
        // A last line without a newline arrives when the pipe closes.
        until(
            &sup,
            "the unterminated line",
            Duration::from_secs(5),
            |_| std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\nno newline\n")),
        )
        .await;
        assert!(ring(&sup, "chatty").iter().any(|l| l == "no newline"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_service_is_restarted_with_growing_backoff() {
        let env = Env::new(Conditions::all());
        let starts = env.path("starts");
        let spec = ServiceSpec {
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
                reset_after: Duration::from_secs(60),
            },
            ..with_env(sh("crashy", "date +%s%N >> \"$F\"; exit 1"), "F", &starts)
        };
        let sup = env.start(vec![spec]);
        until(&sup, "a backoff state", Duration::from_secs(5), |s| {
            state(s, "crashy").starts_with("backoff ")
        })
        .await;
        until(
            &sup,
            "6 starts, then a backoff",
            Duration::from_secs(10),
            |s| {
                let status = s.status_of("crashy").unwrap();
                status.restarts >= 5 && status.state.starts_with("backoff ")
            },
        )
        .await;
        let status = sup.status_of("crashy").unwrap();
        assert_eq!(status.last_exit.as_deref(), Some("exited 1"));
        assert_eq!(status.pid, None);
        sup.stop_all().await;

        let times: Vec<u128> = std::fs::read_to_string(&starts)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let gaps: Vec<u128> = times
            .windows(2)
            .map(|w| (w[1] - w[0]) / 1_000_000)
            .collect();
        assert!(gaps.len() >= 5, "{gaps:?}");
        // The delays chosen: doubled from 100 ms, capped at 400 ms.
        let chosen: Vec<String> = ring(&sup, "crashy")
            .iter()
            .filter_map(|l| l.strip_prefix("-- node-agent: starting again in "))
            .map(|l| l.trim_end_matches(" --").to_string())
            .collect();
        assert_eq!(chosen[..5], ["100ms", "200ms", "400ms", "400ms", "400ms"]);
        // And each was waited for (on a loaded machine starting sh adds more).
        for (gap, delay) in gaps.iter().zip([100, 200, 400, 400, 400]) {
            assert!(*gap >= delay, "{gaps:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_failure_does_not_restart_after_exit_0_and_never_does_not_restart_at_all() {
        let env = Env::new(Conditions::all());
        let sup = env.start(vec![
            ServiceSpec {
                restart: Restart::OnFailure,
                ..sh("oneshot", "exit 0")
            },
            ServiceSpec {
                restart: Restart::Never,
                ..sh("broken", "exit 3")
            },
        ]);
        until(&sup, "both ended", Duration::from_secs(5), |s| {
            state(s, "oneshot") == "done: exited 0" && state(s, "broken") == "failed: exited 3"
        })
        .await;
        // Well past the 50 ms backoff: still not started again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for s in sup.status() {
            assert_eq!(s.restarts, 0, "{s:?}");
            assert!(
                s.state.starts_with("done") || s.state.starts_with("failed"),
                "{s:?}"
            );
        }
        // An operator's restart does start it again.
        sup.restart("broken").await.unwrap();
        until(&sup, "the restart", Duration::from_secs(5), |s| {
            s.status_of("broken").unwrap().restarts == 1
        })
        .await;
        assert!(
            matches!(sup.restart("nope").await, Err(SupervisorError::UnknownService(n)) if n == "nope")
        );
        sup.stop_all().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dependant_waits_until_its_dependency_is_healthy() {
        let env = Env::new(Conditions::all());
        let up = Arc::new(AtomicBool::new(false));
        let db = ServiceSpec {
            health: Health::Probe {
                probe: Arc::new(Flag(up.clone())),
                interval: Duration::from_millis(20),
                timeout: Duration::from_secs(1),
            },
            ..sh("db", "exec sleep 100")
        };
        let app = ServiceSpec {
            deps: vec!["db".into()],
            ..sh("app", "exec sleep 100")
        };
        let sup = env.start(vec![app, db]);
        until(&sup, "db running", Duration::from_secs(5), |s| {
            s.status_of("db").unwrap().pid.is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (db_now, app_now) = (sup.status_of("db").unwrap(), sup.status_of("app").unwrap());
        assert_eq!((db_now.state.as_str(), db_now.healthy), ("running", false));
        assert_eq!(db_now.health.as_deref(), Some("flag down"));
        assert_eq!(app_now.state, "waiting: db healthy");
        assert_eq!(app_now.pid, None);
        assert!(matches!(
            sup.wait_healthy("db", Duration::from_millis(50)).await,
            Err(SupervisorError::NotHealthy { .. })
        ));

        up.store(true, Ordering::SeqCst);
        sup.wait_healthy("db", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(state(&sup, "db"), "healthy");
        until(&sup, "app started", Duration::from_secs(5), |s| {
            s.status_of("app").unwrap().pid.is_some()
        })
        .await;
        sup.wait_healthy("app", Duration::from_secs(5))
            .await
            .unwrap();
        sup.stop_all().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn conditions_gate_the_start() {
        let env = Env::new(Conditions::default());
        let spec = ServiceSpec {
            conditions: vec![Condition::DataMounted, Condition::NetworkUp],
            ..sh("gated", "exec sleep 100")
        };
        let sup = env.start(vec![spec]);
        until(&sup, "waiting for DATA", Duration::from_secs(5), |s| {
            state(s, "gated") == "waiting: data mounted"
        })
        .await;
        env.conditions.send_modify(|c| c.data_mounted = true);
        until(
            &sup,
            "waiting for the network",
            Duration::from_secs(5),
            |s| state(s, "gated") == "waiting: network up",
        )
        .await;
        assert_eq!(sup.status_of("gated").unwrap().pid, None);
        env.conditions.send_modify(|c| c.network_up = true);
        until(&sup, "running", Duration::from_secs(5), |s| {
            state(s, "gated") == "running"
        })
        .await;
        sup.stop_all().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stop_all_stops_dependants_first_and_kills_what_ignores_sigterm() {
        let env = Env::new(Conditions::all());
        let order = env.path("order");
        let stubborn_child = env.path("stubborn-child");
        // The trap runs as soon as `wait` is interrupted by the signal.
        let polite = |name: &str| {
            with_env(
                sh(
                    name,
                    &format!("trap 'echo {name} >> \"$F\"; exit 0' TERM; sleep 100 & wait"),
                ),
                "F",
                &order,
            )
        };
        let base = polite("base");
        let mid = ServiceSpec {
            deps: vec!["base".into()],
            ..polite("mid")
        };
        let top = ServiceSpec {
            deps: vec!["mid".into()],
            stop_timeout: Duration::from_millis(300),
            ..with_env(
                sh("top", "trap '' TERM; sleep 100 & echo $! > \"$F\"; wait"),
                "F",
                &stubborn_child,
            )
        };
        let sup = env.start(vec![base, top, mid]);
        until(&sup, "all running", Duration::from_secs(5), |s| {
            s.status().iter().all(|s| s.pid.is_some())
        })
        .await;
        until(&sup, "top's child", Duration::from_secs(5), |_| {
            std::fs::read_to_string(&stubborn_child).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
        let child: i32 = std::fs::read_to_string(&stubborn_child)
            .unwrap()
            .trim()
            .parse()
            .unwrap();

        let report = sup.stop_all().await;
        let names: Vec<&str> = report.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["top", "mid", "base"]);
        assert_eq!(std::fs::read_to_string(&order).unwrap(), "mid\nbase\n");
        let killed = ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(report[0].outcome, StopOutcome::Killed(killed));
        assert!(report[0].took >= Duration::from_millis(300), "{report:?}");
        assert_eq!(
            report[1].outcome,
            StopOutcome::Exited(ExitStatus::Exited(0))
        );
        assert_eq!(
            report[2].outcome,
            StopOutcome::Exited(ExitStatus::Exited(0))
        );
        // Its child (which ignored SIGTERM as well) went with it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(child) {
            assert!(Instant::now() < deadline, "pid {child} survived the kill");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for s in sup.status() {
            assert_eq!((s.state.as_str(), s.pid), ("stopped", None), "{s:?}");
        }
        assert!(ring(&sup, "top")
            .iter()
            .any(|l| l.contains("after SIGTERM; killing it")));
        // Nothing starts again once stopping began.
        assert!(matches!(
            sup.restart("base").await,
            Err(SupervisorError::ShuttingDown)
        ));
        assert!(sup
            .stop_all()
            .await
            .iter()
            .all(|s| s.outcome == StopOutcome::NotRunning));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn log_files_are_rotated_within_their_cap() {
        let env = Env::new(Conditions::all());
        let limits = LogLimits {
            file_max: 2000,
            keep: 2,
        };
        let script = "i=0; while [ $i -lt 500 ]; do echo \"line $i of the chatty service\"; i=$((i+1)); done; exec sleep 100";
        let sup = env
            .supervisor()
            .with_log_limits(limits)
            .start(vec![sh("chatty", script)])
            .unwrap();
        let log = env.path("logs/chatty.log");
        until(
            &sup,
            "the last line on disk",
            Duration::from_secs(10),
            |_| {
                std::fs::read_to_string(&log)
                    .is_ok_and(|t| t.ends_with("line 499 of the chatty service\n"))
            },
        )
        .await;
        let mut files: Vec<(String, u64)> = std::fs::read_dir(env.path("logs"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        files.sort();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["chatty.log", "chatty.log.1", "chatty.log.2"]);
        assert!(files.iter().all(|(_, size)| *size <= 2000), "{files:?}");
        // The ring still has everything the files had to let go of.
        assert!(ring(&sup, "chatty")
            .iter()
            .any(|l| l == "line 0 of the chatty service"));
        assert_eq!(sup.status_of("chatty").unwrap().log_lines_dropped, 0);
        sup.stop_all().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hung_probe_does_not_block_status_or_other_services() {
        let env = Env::new(Conditions::all());
        let hung = ServiceSpec {
            health: Health::Probe {
                probe: Arc::new(Hung),
                interval: Duration::from_millis(20),
                timeout: Duration::from_millis(100),
            },
            ..sh("hung", "exec sleep 100")
        };
        let sup = env.start(vec![hung, sh("other", "echo alive; exec sleep 100")]);
        until(&sup, "the probe's timeout", Duration::from_secs(5), |s| {
            s.status_of("hung").unwrap().health.as_deref() == Some("no answer within 100ms")
        })
        .await;
        for _ in 0..20 {
            let asked = Instant::now();
            let all = sup.status();
            assert!(
                asked.elapsed() < Duration::from_millis(50),
                "status() took {:?}",
                asked.elapsed()
            );
            assert_eq!(all.len(), 2);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let hung = sup.status_of("hung").unwrap();
        assert_eq!((hung.state.as_str(), hung.healthy), ("running", false));
        assert!(ring(&sup, "other").iter().any(|l| l == "alive"));
        assert!(sup.status_of("other").unwrap().healthy);
        sup.stop_all().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cycle_or_an_unknown_dependency_starts_nothing() {
        let env = Env::new(Conditions::all());
        let ran = env.path("ran");
        let spec = |name: &str, dep: &str| ServiceSpec {
            deps: vec![dep.into()],
            ..with_env(sh(name, "touch \"$F\""), "F", &ran)
        };
        let err = env
            .supervisor()
            .start(vec![spec("a", "b"), spec("b", "a")])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "services depend on each other in a cycle: a → b → a"
        );
        let err = env.supervisor().start(vec![spec("a", "c")]).err().unwrap();
        assert!(
            matches!(err, SupervisorError::UnknownDependency { service, dep } if service == "a" && dep == "c")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!ran.exists());
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error_not_a_panic() {
        let env = Env::new(Conditions::all());
        assert!(matches!(
            env.supervisor().start(vec![sh("x", "true")]).err(),
            Some(SupervisorError::NoRuntime)
        ));
    }

    /// A writable cgroup2 hierarchy on this host, if there is one.
    fn writable_cgroup2() -> Option<PathBuf> {
        let candidates = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
        let cgroup2 = candidates.iter().map(Path::new).find(|p| {
            nix::sys::statfs::statfs(*p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })?;
        let dir = cgroup2.join(format!("caisson-test-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(dir)
    }

    /// Kills and removes the test's groups however the test ends.
    struct RemoveGroups(PathBuf);

    impl Drop for RemoveGroups {
        fn drop(&mut self) {
            let slice = self.0.join("caisson.slice");
            let groups: Vec<PathBuf> = std::fs::read_dir(&slice)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            for group in &groups {
                let _ = std::fs::write(group.join("cgroup.kill"), "1");
            }
            for _ in 0..100 {
                groups.iter().for_each(|g| drop(std::fs::remove_dir(g)));
                if groups.iter().all(|g| !g.exists()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir(&slice);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_service_runs_in_its_cgroup2_group_and_cgroup_kill_takes_everything() {
        let Some(root) = writable_cgroup2() else {
            eprintln!(
                "SKIPPED a_service_runs_in_its_cgroup2_group_and_cgroup_kill_takes_everything: \
                 no writable cgroup2 at /sys/fs/cgroup or /sys/fs/cgroup/unified (run as root on a cgroup2 host)"
            );
            return;
        };
        let _remove = RemoveGroups(root.clone());
        let env = Env::new(Conditions::all());
        let escaped = env.path("escaped");
        // The child leaves the process group (setsid): only the cgroup can
        // still find it.
        let spec = ServiceSpec {
            stop_timeout: Duration::from_millis(200),
            ..with_env(
                sh(
                    "caged",
                    "trap '' TERM; setsid sleep 100 & echo $! > \"$F\"; wait",
                ),
                "F",
                &escaped,
            )
        };
        let sup = Supervisor::new(
            REAPER.clone(),
            root.clone(),
            env.path("logs"),
            env.conditions.subscribe(),
        )
        .start(vec![spec])
        .unwrap();
        until(&sup, "the escaped child", Duration::from_secs(5), |_| {
            std::fs::read_to_string(&escaped).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
        let child: i32 = std::fs::read_to_string(&escaped)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let main = sup.status_of("caged").unwrap().pid.unwrap();
        let group = root.join("caisson.slice/caged");
        let relative = group.strip_prefix(root.parent().unwrap()).unwrap();
        for pid in [main as i32, child] {
            let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(
                membership
                    .lines()
                    .any(|l| l.starts_with("0::") && l.ends_with(relative.to_str().unwrap())),
                "pid {pid}: {membership}"
            );
        }
        let report = sup.stop_all().await;
        assert!(
            matches!(report[0].outcome, StopOutcome::Killed(_)),
            "{report:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(child) {
            assert!(
                Instant::now() < deadline,
                "pid {child} outlived cgroup.kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Nothing is left in it: an empty group can be removed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&group).is_err() {
            assert!(Instant::now() < deadline, "{} stays busy", group.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
