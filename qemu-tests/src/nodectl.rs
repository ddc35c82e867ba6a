//! Driving a node through its API the way an operator does: the VM's API
//! port forwarded to 127.0.0.1, and the real `nodectl` binary with a cluster
//! of its own (CA, admin certificate, client config) in a test directory.
//! Nothing here reads or writes the user's own nodectl config.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{retry, run_for, Finished, Stream};
use crate::{env, HarnessError, Result, Vm, VmOptions};

/// The node API's port on the node.
pub const API_PORT: u16 = 50443;

/// A bound for calls that should answer at once; TCG is slow, TLS on it more so.
pub const CALL: Duration = Duration::from_secs(60);

/// The `nodectl` binary with its own working directory and client config,
/// aimed at one endpoint.
#[derive(Debug, Clone)]
pub struct Nodectl {
    bin: PathBuf,
    dir: PathBuf,
    endpoint: String,
}

impl Nodectl {
    /// `dir` holds the client config (`nodectl.toml`) and is the working
    /// directory, so relative paths in arguments land there.
    pub fn new(bin: &Path, dir: &Path, endpoint: &str) -> Nodectl {
        Nodectl {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            endpoint: endpoint.to_string(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `nodectl -e <endpoint> ARGS` with the client config in `dir`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(&self.dir)
            .env("NODECTLCONFIG", self.dir.join("nodectl.toml"))
            .env("XDG_CONFIG_HOME", &self.dir)
            .env("HOME", &self.dir)
            .args(["-e", &self.endpoint])
            .args(args);
        cmd
    }

    /// Run to its end (or kill it after `timeout`), whatever the exit status.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Finished> {
        run_for(&mut self.command(args), timeout)
    }

    /// Run; it must succeed. Returns stdout.
    pub fn ok(&self, args: &[&str], timeout: Duration) -> Result<String> {
        self.run(args, timeout)?.ok()
    }

    /// Run with `-o json`; it must succeed. Returns the node's `result`.
    pub fn json(&self, args: &[&str], timeout: Duration) -> Result<Value> {
        let mut with_json = vec!["-o", "json"];
        with_json.extend_from_slice(args);
        let finished = self.run(&with_json, timeout)?;
        let command = finished.command.clone();
        let stdout = finished.ok()?;
        json_result(&stdout).map_err(|message| HarnessError::Output { command, message })
    }

    /// Start a command that keeps printing, e.g. `logs agent -f`.
    pub fn stream(&self, args: &[&str]) -> Result<Stream> {
        Stream::spawn(&mut self.command(args))
    }

    /// `gen secrets` then `gen config`: the cluster CA and admin certificate
    /// in `dir/secrets`, the machine config `dir/node.toml` (DHCP, the CA
    /// and its key) and a context for the endpoint in the client config.
    pub fn gen_cluster(&self) -> Result<Cluster> {
        self.ok(&["gen", "secrets", "--out", "secrets"], CALL)?;
        self.ok(
            &["gen", "config", "--secrets", "secrets", "--out", "."],
            CALL,
        )?;
        Ok(Cluster {
            secrets: self.dir.join("secrets"),
            node_config: self.dir.join("node.toml"),
        })
    }
}

/// The `result` of the first line of `nodectl -o json` output, or the
/// node's error as text.
pub fn json_result(stdout: &str) -> std::result::Result<Value, String> {
    let line = stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| "no output".to_string())?;
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    if let Some(result) = value.get("result") {
        return Ok(result.clone());
    }
    Err(format!("no result: {line}"))
}

/// What `nodectl gen secrets` + `gen config` made.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub secrets: PathBuf,
    /// The generated machine config (tests append to it).
    pub node_config: PathBuf,
}

impl Cluster {
    pub fn ca_cert(&self) -> PathBuf {
        self.secrets.join("ca.crt")
    }

    pub fn admin_cert(&self) -> PathBuf {
        self.secrets.join("admin.crt")
    }

    pub fn admin_key(&self) -> PathBuf {
        self.secrets.join("admin.key")
    }

    /// The generated machine config plus `extra` TOML, written to `path`.
    pub fn config_with(&self, path: &Path, extra: &str) -> Result<PathBuf> {
        let base = std::fs::read_to_string(&self.node_config)
            .map_err(HarnessError::io("cannot read", &self.node_config))?;
        std::fs::write(path, format!("{base}\n{extra}"))
            .map_err(HarnessError::io("cannot write", path))?;
        Ok(path.to_path_buf())
    }
}

/// The fingerprint in the agent's maintenance line
/// (`maintenance mode: …, certificate fingerprint SHA256:<hex>`).
pub fn maintenance_fingerprint(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("certificate fingerprint ")?;
    let fp = rest.split_whitespace().next()?;
    let hex = fp.strip_prefix("SHA256:")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| fp.to_string())
}

/// A VM whose API is reachable on 127.0.0.1, and nodectl with a fresh
/// cluster aimed at it.
pub struct ApiNode {
    pub vm: Vm,
    pub ctl: Nodectl,
    pub cluster: Cluster,
    /// The host port forwarded to the node's API port.
    pub port: u16,
}

impl ApiNode {
    /// Start the VM with the API port forwarded, using `$CAISSON_NODECTL_BIN`.
    pub fn start(opts: VmOptions) -> Result<ApiNode> {
        let bin = env::input(env::NODECTL_BIN)?;
        ApiNode::start_with(opts, &bin)
    }

    /// Start the VM with the API port forwarded and make a cluster for it in
    /// `<work root>/<name>.nodectl/`.
    pub fn start_with(mut opts: VmOptions, nodectl_bin: &Path) -> Result<ApiNode> {
        if !opts.forward_ports.contains(&API_PORT) {
            opts.forward_ports.push(API_PORT);
        }
        let dir = env::fresh_dir(&format!("{}.nodectl", opts.name))?;
        let mut vm = Vm::start(opts)?;
        let port = vm.host_port(API_PORT).unwrap_or(API_PORT);
        let ctl = Nodectl::new(nodectl_bin, &dir, &format!("127.0.0.1:{port}"));
        let cluster = vm.context(ctl.gen_cluster())?;
        Ok(ApiNode {
            vm,
            ctl,
            cluster,
            port,
        })
    }

    /// `https://127.0.0.1:<port><path>`, for curl.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Wait for the maintenance line and return its fingerprint.
    pub fn wait_for_maintenance(&mut self, timeout: Duration) -> Result<String> {
        let line = self.vm.wait_for(
            "the maintenance line with a certificate fingerprint",
            timeout,
            |l| l.contains("maintenance mode: ") && maintenance_fingerprint(l).is_some(),
        )?;
        Ok(maintenance_fingerprint(&line).unwrap_or_default())
    }

    /// Call until the node answers (its network may come up after
    /// `boot: ready`); fails with the last answer and the console tail.
    pub fn until_ok(&mut self, args: &[&str], timeout: Duration) -> Result<String> {
        let ctl = &self.ctl;
        let answer = retry(timeout, Duration::from_millis(250), || ctl.ok(args, CALL));
        self.vm.context(answer)
    }

    /// Run nodectl; failures carry the console tail.
    pub fn ok(&mut self, args: &[&str]) -> Result<String> {
        let answer = self.ctl.ok(args, CALL);
        self.vm.context(answer)
    }

    /// Run nodectl with `-o json`; failures carry the console tail.
    pub fn json(&mut self, args: &[&str]) -> Result<Value> {
        let answer = self.ctl.json(args, CALL);
        self.vm.context(answer)
    }

    /// Run nodectl whatever its exit status.
    pub fn run(&mut self, args: &[&str], timeout: Duration) -> Result<Finished> {
        let finished = self.ctl.run(args, timeout);
        self.vm.context(finished)
    }

    /// The maintenance path: wait for the fingerprint, reach the node with
    /// `--insecure --fingerprint`, apply `config`, then wait until mutual
    /// TLS works. Returns the fingerprint.
    pub fn apply_first_config(&mut self, config: &Path, timeout: Duration) -> Result<String> {
        let fp = self.wait_for_maintenance(timeout)?;
        let insecure = ["--insecure", "--fingerprint", fp.as_str()];
        self.until_ok(&[&insecure[..], &["version"]].concat(), timeout)?;
        let config = config.display().to_string();
        self.ok(&[&insecure[..], &["apply-config", "-f", config.as_str()]].concat())?;
        self.vm.wait_for_line("api: serving mTLS", timeout)?;
        self.until_ok(&["version"], timeout)?;
        Ok(fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fingerprint_of_the_maintenance_line() {
        let hex = "3f9a".repeat(16);
        let line = format!("[   4.210] maintenance mode: no machine config; API on port 50443, certificate fingerprint SHA256:{hex}");
        assert_eq!(
            maintenance_fingerprint(&line),
            Some(format!("SHA256:{hex}"))
        );
        assert_eq!(
            maintenance_fingerprint("certificate fingerprint SHA256:3f9a"),
            None
        );
        assert_eq!(maintenance_fingerprint("maintenance mode: starting"), None);
    }

    #[test]
    fn takes_the_result_of_json_output() {
        let out = "{\"node\":\"127.0.0.1:1\",\"result\":{\"hostname\":\"n1\"}}\n";
        assert_eq!(json_result(out).unwrap()["hostname"], "n1");
        assert!(
            json_result("{\"node\":\"x\",\"error\":{\"code\":\"forbidden\"}}")
                .unwrap_err()
                .contains("forbidden")
        );
        assert!(json_result("").is_err());
    }
}
