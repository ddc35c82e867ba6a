//! `cargo xtask bench`: the figures we hold ourselves to, each against its
//! target. Reports PASS/MISS; never fails on a miss. The node API's figures
//! are measured in `bench_api`, the output formats in `bench_formats`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use qemu_tests::nodectl::ApiNode;
use qemu_tests::tools::{self, SquashEntry};
use qemu_tests::{disk, VmOptions};

use crate::bench_api::{self, ApiFigures};
use crate::bench_formats::FormatFigures;
use crate::deps;
use crate::image::{build_builder, build_image};
use crate::workspace::Workspace;

const MIB: f64 = 1024.0 * 1024.0;
const BUILD_TARGET: Duration = Duration::from_secs(60);
const OWN_TARGET_MIB: f64 = 15.0;
const BOOT_TARGET: Duration = Duration::from_secs(12);
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const RSS_BOOT_TARGET_MIB: f64 = 20.0;
const RSS_FOLLOWERS_TARGET_MIB: f64 = 40.0;
const APPLY_TARGET: Duration = Duration::from_secs(2);

pub fn bench(ws: &Workspace, boots: usize, builds: usize, no_vm: bool) -> Result<()> {
    deps::ensure(&[deps::FETCH, deps::IMAGE, deps::BENCH])?;
    crate::fetch::fetch(ws, false)?;
    let programs = crate::programs::build(ws)?;
    let builder = build_builder(ws)?;
    let spec = ws.default_spec();

    // (1) Build time, warm: artifacts fetched, builder compiled.
    let mut times = Vec::new();
    let mut raw = PathBuf::new();
    for i in 0..builds {
        let out = ws.target_dir.join("bench").join(format!("build-{i}"));
        let built = build_image(ws, &builder, &spec, &out, &programs)?;
        println!(
            "bench: build {} took {:.1} s",
            i + 1,
            built.took.as_secs_f64()
        );
        times.push(built.took);
        raw = built.raw;
    }
    let build = median(&mut times);

    // (2) Sizes, and each output format against the raw image.
    let sizes = Sizes::measure(&raw, &programs.init, &ws.target_dir.join("bench"))?;
    let formats = match crate::bench_formats::measure(ws, &builder, &programs, &spec) {
        Ok(f) => Some(f),
        Err(e) => {
            println!("bench: the output format figures failed: {e:#}");
            None
        }
    };
    if no_vm {
        println!();
        println!("== Caisson bench ({builds} builds, no VM; medians) ==");
        print_build(build, &sizes, formats.as_ref());
        return Ok(());
    }
    let nodectl = crate::programs::build_nodectl(ws, true)?;

    // (3)+(4) Boot to the agent's banner and to the API answering (no
    // config: maintenance mode), and the agent's memory once ready.
    let mut boot_times = Vec::new();
    let mut api_times = Vec::new();
    let mut ready_line = None;
    let mut last = None;
    for i in 0..boots {
        let mut opts = VmOptions::new(&format!("bench-boot-{i}"));
        opts.image = Some(raw.clone());
        let mut node = ApiNode::start_with(opts, &nodectl)?;
        let times = bench_api::boot_to_api(&mut node, BOOT_TIMEOUT)?;
        println!(
            "bench: boot {} reached the banner after {:.1} s, the API answered after {:.1} s",
            i + 1,
            times.banner.as_secs_f64(),
            times.api.as_secs_f64()
        );
        boot_times.push(times.banner);
        api_times.push(times.api);
        if ready_line.is_none() {
            ready_line = node
                .vm
                .wait_for_line("boot: ready", Duration::from_secs(60))
                .ok();
        }
        last = Some((node, times.fingerprint));
    }
    let boot = median(&mut boot_times);
    let to_api = median(&mut api_times);

    // (5) The API: memory configured and under 100 followers, live applies.
    let api = match last.as_mut() {
        Some((node, fingerprint)) => match bench_api::measure(node, fingerprint) {
            Ok(figures) => Some(figures),
            Err(e) => {
                println!(
                    "bench: the API figures failed: {e:#}
{}",
                    node.vm.tail()
                );
                None
            }
        },
        None => None,
    };
    drop(last);

    // (6) An A/B upgrade to a signed v2 bundle, and the configured boot.
    let upgrade = match crate::bench_upgrade::measure(ws, &builder, &programs, &raw, &nodectl) {
        Ok(f) => Some(f),
        Err(e) => {
            println!("bench: the upgrade figures failed: {e:#}");
            None
        }
    };

    println!();
    println!(
        "== Caisson bench ({} builds, {} boots; medians) ==",
        builds, boots
    );
    print_build(build, &sizes, formats.as_ref());
    verdict(
        "boot to agent banner (TCG + OVMF)",
        format!("{:.1} s", boot.as_secs_f64()),
        format!("≤ {} s", BOOT_TARGET.as_secs()),
        boot <= BOOT_TARGET,
    );
    println!(
        "  {:<46} {:>10}   (report)",
        "boot to API answering `nodectl version`",
        format!("{:.1} s", to_api.as_secs_f64())
    );
    match ready_line.as_deref().and_then(bench_api::vm_rss_kib) {
        Some(kib) => rss_verdict(
            "agent RSS at boot: ready (no config)",
            kib,
            RSS_BOOT_TARGET_MIB,
        ),
        None => println!(
            "  {:<46} not reported (no VmRSS in the `boot: ready` line: {:?})",
            "agent RSS at boot: ready",
            ready_line.as_deref().and_then(memory_of)
        ),
    }
    match api {
        Some(api) => print_api(api),
        None => println!("  {:<46} not measured (see above)", "node API figures"),
    }
    match upgrade {
        Some(f) => crate::bench_upgrade::print(&f),
        None => println!("  {:<46} not measured (see above)", "upgrade figures"),
    }
    Ok(())
}

/// Build time, where the bytes go, and the output formats.
fn print_build(build: Duration, sizes: &Sizes, formats: Option<&FormatFigures>) {
    verdict(
        "image build (warm)",
        format!("{:.1} s", build.as_secs_f64()),
        format!("≤ {} s", BUILD_TARGET.as_secs()),
        build <= BUILD_TARGET,
    );
    sizes.print();
    let own = sizes.own_bytes() as f64 / MIB;
    verdict(
        "OS's own part (agent, init, libraries, rest)",
        format!("{own:.1} MiB"),
        format!("≤ {OWN_TARGET_MIB} MiB"),
        own <= OWN_TARGET_MIB,
    );
    match formats {
        Some(f) => crate::bench_formats::print(f, build),
        None => println!("  {:<46} not measured (see above)", "output formats"),
    }
}

fn print_api(mut api: ApiFigures) {
    rss_verdict(
        "agent RSS configured, serving mTLS",
        api.rss_configured_kib,
        RSS_BOOT_TARGET_MIB,
    );
    rss_verdict(
        &format!(
            "agent RSS, {}/{} `logs -f` clients",
            api.followers_attached,
            bench_api::FOLLOWERS
        ),
        api.rss_followers_kib,
        RSS_FOLLOWERS_TARGET_MIB,
    );
    let rounds = api.applies.len();
    let apply = median(&mut api.applies);
    verdict(
        &format!("apply --mode no-reboot, host name + sysctl ({rounds}×)"),
        format!("{:.2} s", apply.as_secs_f64()),
        format!("≤ {} s", APPLY_TARGET.as_secs()),
        apply <= APPLY_TARGET,
    );
}

fn rss_verdict(what: &str, kib: u64, target_mib: f64) {
    let mib = kib as f64 / 1024.0;
    verdict(
        what,
        format!("{mib:.1} MiB"),
        format!("≤ {target_mib} MiB"),
        mib <= target_mib,
    );
}

/// The memory figure of the agent's `boot: ready` line, from "rss"/"VmRSS" on.
fn memory_of(line: &str) -> Option<String> {
    let at = line.to_ascii_lowercase().find("rss")?;
    let start = line[..at]
        .rfind(|c: char| c.is_whitespace() || c == '(' || c == ',')
        .map(|i| i + 1)
        .unwrap_or(at);
    Some(line[start..].trim_end_matches(')').to_string())
}

fn verdict(what: &str, value: String, target: String, pass: bool) {
    println!(
        "  {what:<46} {value:>10}   target {target:<10} {}",
        if pass { "PASS" } else { "MISS" }
    );
}

fn median(xs: &mut [Duration]) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Where the bytes of an image go.
struct Sizes {
    esp_used: u64,
    kernel: u64,
    initrd: u64,
    boot_loader: u64,
    root_compressed: u64,
    modules: u64,
    payload: u64,
    agent: u64,
    init: u64,
    libraries: u64,
    rest: u64,
}

impl Sizes {
    fn measure(raw: &Path, init_bin: &Path, scratch: &Path) -> Result<Sizes> {
        let esp = disk::partition(raw, "ESP")?;
        let root = disk::partition(raw, "ROOT-A")?;
        let esp_used = esp.size() - tools::fat_free_bytes(raw, esp.offset())?;
        let esp_file = |fat_path: &str| -> Result<u64> {
            let dest = scratch.join("esp-file");
            tools::mcopy_out(raw, esp.offset(), fat_path, &dest)?;
            Ok(std::fs::metadata(&dest)?.len())
        };
        let (kernel, initrd, boot_loader) = (
            esp_file("a/vmlinuz")?,
            esp_file("a/initrd")?,
            esp_file("EFI/BOOT/BOOTX64.EFI")?,
        );
        let root_compressed = tools::squashfs_bytes(raw, root.offset())?;
        let entries = tools::squashfs_listing(raw, root.offset())?;
        let init = std::fs::metadata(init_bin)
            .with_context(|| format!("cannot stat {}", init_bin.display()))?
            .len();
        let mut s = Sizes {
            esp_used,
            kernel,
            initrd,
            boot_loader,
            root_compressed,
            modules: 0,
            payload: 0,
            agent: 0,
            init,
            libraries: 0,
            rest: 0,
        };
        for e in entries.iter().filter(|e| e.kind == '-') {
            *s.bucket(e) += e.size;
        }
        Ok(s)
    }

    fn bucket(&mut self, e: &SquashEntry) -> &mut u64 {
        let p = e.path.as_str();
        if p.starts_with("usr/lib/modules/") {
            &mut self.modules
        } else if p.starts_with("usr/bin/containerd") || p == "usr/bin/ctr" || p == "usr/sbin/runc"
        {
            &mut self.payload
        } else if p == "usr/bin/node-agent" {
            &mut self.agent
        } else if p.starts_with("usr/lib/x86_64-linux-gnu/") || p.starts_with("usr/lib64/") {
            &mut self.libraries
        } else {
            &mut self.rest
        }
    }

    /// Ours: everything but the kernel's modules and the container runtime.
    fn own_bytes(&self) -> u64 {
        self.agent + self.init + self.libraries + self.rest
    }

    fn print(&self) {
        let row =
            |what: &str, bytes: u64| println!("  {what:<46} {:>10.2} MiB", bytes as f64 / MIB);
        row("ESP used", self.esp_used);
        row("  kernel (a/vmlinuz)", self.kernel);
        row("  initrd (a/initrd)", self.initrd);
        row("  systemd-boot", self.boot_loader);
        row("root squashfs (compressed)", self.root_compressed);
        row("  modules (uncompressed)", self.modules);
        row("  containerd + runc (uncompressed)", self.payload);
        row("  node-agent", self.agent);
        row("  libraries (glibc, libseccomp)", self.libraries);
        row("  everything else in the root", self.rest);
        row("caisson-init (in the initrd)", self.init);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_agents_memory_figure() {
        assert_eq!(
            memory_of("node-agent: boot: ready in 1.2 s (VmRSS 3120 kB)").as_deref(),
            Some("VmRSS 3120 kB")
        );
        assert_eq!(
            memory_of("boot: ready after 3 s, rss=4.1 MiB").as_deref(),
            Some("rss=4.1 MiB")
        );
        assert_eq!(memory_of("boot: ready"), None);
    }
}
