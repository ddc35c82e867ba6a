//! The command lines that run the machine config's system containers under
//! containerd, outside Kubernetes: `ctr run` in the foreground, as the
//! supervised service process.
//!
//! What ctr 1.6 does that this relies on (cmd/ctr/commands/run/run.go and
//! run_unix.go, and checked against the real ctr 1.6.20 in
//! `tests/containerd.rs`):
//!
//! - Without `--detach`, ctr forwards every signal it gets to the task, waits
//!   for it and exits with the task's exit status; with `--rm` it then
//!   deletes the container and its snapshot. So SIGTERM to ctr stops the
//!   container, and the service's exit status is the container's.
//! - Words after the container id replace the image's whole command line,
//!   entrypoint included (`oci.WithProcessArgs`); no words keep the image's
//!   `Entrypoint` + `Cmd`. ctr has no `--entrypoint`.
//! - A ctr killed with SIGKILL leaves its task and container behind, and
//!   the next `ctr run` of the same id fails with "already exists":
//!   [`cleanup_argv`] removes them first.

use caisson_config::{Container, Mount};

use super::{ContainerdError, Ctr, SNAPSHOTTER};

/// The containerd namespace of system containers and their images.
pub const SYSTEM_NAMESPACE: &str = "caisson";

/// Choices the machine config does not make.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `--cgroup`: the container's cgroup path. `None`: ctr's default,
    /// `/<namespace>/<id>` (`/caisson/<name>`).
    pub cgroup: Option<String>,
}

/// The containerd id of a system container: its name (an RFC 1123 label,
/// unique among the config's containers, so a valid containerd id).
pub fn container_id(container: &Container) -> String {
    container.name.clone()
}

/// `ctr --address <socket> --namespace caisson run --rm --net-host
/// --snapshotter overlayfs --runc-binary <runc> [--cgroup <path>]
/// [--memory-limit <bytes>] [--mount …]… [--env K=V]… <image> <id> [args…]`.
///
/// Host networking: a system container serves the node itself (an
/// exporter, an agent) and there is no CNI outside Kubernetes; without it
/// the container would have a loopback interface only. Flags must come
/// before the image (ctr stops reading flags there).
pub fn run_argv(
    ctr: &Ctr,
    container: &Container,
    options: &RunOptions,
) -> Result<Vec<String>, ContainerdError> {
    let invalid = |why: String| ContainerdError::Container {
        container: container.name.clone(),
        why,
    };
    let mut argv = vec![ctr.binary.display().to_string()];
    argv.extend(ctr.global_args(SYSTEM_NAMESPACE));
    argv.extend(
        [
            "run",
            "--rm",
            "--net-host",
            "--snapshotter",
            SNAPSHOTTER,
            "--runc-binary",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    argv.push(ctr.runc.display().to_string());
    if let Some(cgroup) = &options.cgroup {
        argv.push("--cgroup".to_string());
        argv.push(cgroup.clone());
    }
    if let Some(mib) = container.memory_max_mib {
        argv.push("--memory-limit".to_string());
        argv.push((u64::from(mib) * 1024 * 1024).to_string());
    }
    for m in &container.mounts {
        argv.push("--mount".to_string());
        argv.push(mount_flag(m).map_err(invalid)?);
    }
    for (key, value) in &container.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(invalid(format!(
                "environment variable {key:?} cannot be passed"
            )));
        }
        argv.push("--env".to_string());
        argv.push(format!("{key}={value}"));
    }
    if container.image.is_empty() || container.image.starts_with('-') {
        return Err(invalid(format!(
            "image {:?} is not an image reference",
            container.image
        )));
    }
    argv.push(container.image.clone());
    argv.push(container_id(container));
    argv.extend(container.args.iter().cloned());
    Ok(argv)
}

/// ctr's `--mount` value. ctr reads it as one CSV record of `key=value`
/// fields and splits `options` on `:`, so paths holding `,` or `"` are
/// refused rather than quoted.
fn mount_flag(m: &Mount) -> Result<String, String> {
    for (what, path) in [("source", &m.source), ("destination", &m.destination)] {
        if !path.starts_with('/') {
            return Err(format!("mount {what} {path:?} is not an absolute path"));
        }
        if path.contains([',', '"', '\n', '\r', '\0']) {
            return Err(format!("mount {what} {path:?} holds a character ctr's --mount cannot carry (, \" or a control character)"));
        }
    }
    let access = if m.readonly { "ro" } else { "rw" };
    Ok(format!(
        "type=bind,src={},dst={},options=rbind:{access}",
        m.source, m.destination
    ))
}

/// What removes a container of this id left by a ctr that was killed
/// (its task, then the container and its snapshot). Run each in order and
/// ignore their failures ("not found" is the usual answer): whether the
/// next `ctr run` works is what counts.
///
/// `tasks delete --force` kills the task with SIGKILL and waits for it to
/// stop before deleting it, so `containers delete` never finds it running.
pub fn cleanup_argv(ctr: &Ctr, id: &str) -> Vec<Vec<String>> {
    let command = |words: &[&str]| {
        let mut argv = vec![ctr.binary.display().to_string()];
        argv.extend(ctr.global_args(SYSTEM_NAMESPACE));
        argv.extend(words.iter().map(|s| s.to_string()));
        argv.push(id.to_string());
        argv
    };
    vec![
        command(&["tasks", "delete", "--force"]),
        command(&["containers", "delete"]),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use caisson_config::RestartPolicy;

    use super::*;
    use crate::containerd::shell_words;

    fn exporter() -> Container {
        Container {
            name: "node-exporter".into(),
            image: "docker.io/prom/node-exporter:v1.8.2".into(),
            archive: Some("node-exporter.tar.zst".into()),
            args: vec!["--path.rootfs=/host".into()],
            env: BTreeMap::from([("TZ".into(), "UTC".into()), ("A".into(), "x y".into())]),
            restart: RestartPolicy::Always,
            memory_max_mib: Some(64),
            mounts: vec![
                Mount {
                    source: "/".into(),
                    destination: "/host".into(),
                    readonly: true,
                },
                Mount {
                    source: "/var/lib/exporter".into(),
                    destination: "/data".into(),
                    readonly: false,
                },
            ],
        }
    }

    #[test]
    fn a_system_container_becomes_one_ctr_run() {
        let argv = run_argv(&Ctr::node(), &exporter(), &RunOptions::default()).unwrap();
        assert_eq!(
            shell_words(&argv),
            "/usr/bin/ctr --address /run/containerd/containerd.sock --namespace caisson \
             run --rm --net-host --snapshotter overlayfs --runc-binary /usr/sbin/runc \
             --memory-limit 67108864 \
             --mount type=bind,src=/,dst=/host,options=rbind:ro \
             --mount type=bind,src=/var/lib/exporter,dst=/data,options=rbind:rw \
             --env 'A=x y' --env TZ=UTC \
             docker.io/prom/node-exporter:v1.8.2 node-exporter --path.rootfs=/host"
        );
    }

    #[test]
    fn options_and_minimal_containers() {
        let bare = Container {
            args: vec![],
            env: BTreeMap::new(),
            memory_max_mib: None,
            mounts: vec![],
            ..exporter()
        };
        let options = RunOptions {
            cgroup: Some("/caisson.slice/node-exporter.container".into()),
        };
        let argv = run_argv(&Ctr::node(), &bare, &options).unwrap();
        assert_eq!(
            argv[7..],
            [
                "--net-host",
                "--snapshotter",
                "overlayfs",
                "--runc-binary",
                "/usr/sbin/runc",
                "--cgroup",
                "/caisson.slice/node-exporter.container",
                "docker.io/prom/node-exporter:v1.8.2",
                "node-exporter"
            ]
        );
    }

    #[test]
    fn what_ctr_cannot_carry_is_refused_with_the_container_name() {
        let with_mount = |source: &str| Container {
            mounts: vec![Mount {
                source: source.into(),
                destination: "/d".into(),
                readonly: true,
            }],
            ..exporter()
        };
        let e = run_argv(&Ctr::node(), &with_mount("/a,b"), &RunOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("system container \"node-exporter\": mount source \"/a,b\""),
            "{e}"
        );
        assert!(run_argv(
            &Ctr::node(),
            &with_mount("relative"),
            &RunOptions::default()
        )
        .is_err());
        // ':' and '=' are fine inside a path: only `options` is split on ':'.
        assert!(run_argv(&Ctr::node(), &with_mount("/a:b=c"), &RunOptions::default()).is_ok());
        let bad_env = Container {
            env: BTreeMap::from([("A=B".into(), "x".into())]),
            ..exporter()
        };
        assert!(run_argv(&Ctr::node(), &bad_env, &RunOptions::default()).is_err());
        let flag_image = Container {
            image: "--privileged".into(),
            ..exporter()
        };
        assert!(run_argv(&Ctr::node(), &flag_image, &RunOptions::default()).is_err());
    }

    #[test]
    fn a_stale_container_is_cleaned_up_task_first() {
        let argvs: Vec<String> = cleanup_argv(&Ctr::node(), "node-exporter")
            .iter()
            .map(|a| shell_words(a))
            .collect();
        assert_eq!(
            argvs,
            [
                "/usr/bin/ctr --address /run/containerd/containerd.sock --namespace caisson tasks delete --force node-exporter",
                "/usr/bin/ctr --address /run/containerd/containerd.sock --namespace caisson containers delete node-exporter",
            ]
        );
    }
}
