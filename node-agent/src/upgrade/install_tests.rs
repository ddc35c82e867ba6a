//! The install order against plain files standing in for the ESP and the
//! slot partition, with real bundles from caisson-bundle's writer.

use std::io::Cursor;

use caisson_bundle::{BundleVerity, ManifestBase, Payload, PublicKey, SigningKey};

use crate::upgrade::{BootVerdict, Upgrades};

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    target: Target,
    key: SigningKey,
}

const ROOT_SIZE: usize = 3 * 4096;

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp");
    fs::create_dir_all(esp.join(ENTRIES_DIR)).unwrap();
    fs::create_dir_all(esp.join("a")).unwrap();
    fs::write(esp.join(ENTRIES_DIR).join("caisson-0.1.0-a.conf"), "title Caisson 0.1.0\n").unwrap();
    fs::write(esp.join("a/vmlinuz"), b"old kernel a").unwrap();
    let root_device = dir.path().join("root-b.img");
    fs::write(&root_device, vec![0xeeu8; 64 * 1024]).unwrap();
    let target = Target {
        esp,
        running: Slot::A,
        root_device,
        root_capacity: 64 * 1024,
        root_partuuid: Uuid::from_u128(0x1234),
        kernel_args: vec!["nowatchdog".into()],
    };
    Fixture { dir, target, key: SigningKey::from_seed(&[7u8; 32]) }
}

impl Fixture {
    fn bundle(&self, version: &str, key: Option<&SigningKey>) -> Vec<u8> {
        let p = |name: &str, fill: u8, len: usize| {
            let path = self.dir.path().join(format!("{version}-{name}"));
            fs::write(&path, (0..len).map(|i| fill ^ (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
            path
        };
        let (root, kernel, initrd) = (p("root", 1, ROOT_SIZE), p("kernel", 2, 5000), p("initrd", 3, 700));
        let base = ManifestBase {
            name: "caisson".into(),
            version: version.into(),
            kernel_release: "6.1.0-test".into(),
            source_date_epoch: 1,
            verity: BundleVerity { root_hash: "ab".repeat(32), salt: "cd".repeat(32), hash_offset: 8192 },
            cmdline: vec!["console=ttyS0,115200".into()],
        };
        let payloads = [
            Payload { kind: ArtifactKind::Root, path: &root },
            Payload { kind: ArtifactKind::Kernel, path: &kernel },
            Payload { kind: ArtifactKind::Initrd, path: &initrd },
        ];
        let mut out = Vec::new();
        caisson_bundle::write_bundle(base, &payloads, key, &mut out).unwrap();
        out
    }

    fn policy(&self) -> TrustPolicy {
        TrustPolicy { trusted: vec![self.key.public()], allow_unsigned: false }
    }

    fn entries(&self) -> Vec<String> {
        list_entries(&self.target.esp).unwrap().iter().map(BootEntry::file_name).collect()
    }

    fn root_bytes(&self) -> Vec<u8> {
        fs::read(&self.target.root_device).unwrap()
    }

    fn install(&self, bundle: &[u8], policy: &TrustPolicy) -> Result<Installed, InstallError> {
        install(Cursor::new(bundle), policy, &self.target, &mut |_| {})
    }
}

#[test]
fn a_signed_bundle_lands_in_the_inactive_slot_with_a_counted_entry_written_last() {
    let f = fixture();
    let bundle = f.bundle("0.2.0", Some(&f.key));
    let mut steps = Vec::new();
    let done = install(Cursor::new(&bundle), &f.policy(), &f.target, &mut |s| steps.push(s.clone())).unwrap();
    assert_eq!(done.entry, "caisson-0.2.0-b+3.conf");
    assert_eq!(done.signed_by, Some(f.key.public().key_id()));
    assert!(matches!(steps.last(), Some(Step::EntryWritten(_))), "{steps:?}");
    assert!(matches!(steps.first(), Some(Step::Verified { .. })), "{steps:?}");
    assert_eq!(f.entries(), ["caisson-0.2.0-b+3.conf", "caisson-0.1.0-a.conf"]);
    let root = f.root_bytes();
    assert_eq!(root.get(..ROOT_SIZE).unwrap(), &fs::read(f.dir.path().join("0.2.0-root")).unwrap()[..]);
    assert!(root[ROOT_SIZE..].iter().all(|b| *b == 0xee), "nothing past the image is touched");
    assert_eq!(fs::read(f.target.esp.join("b/vmlinuz")).unwrap(), fs::read(f.dir.path().join("0.2.0-kernel")).unwrap());
    assert_eq!(fs::read(f.target.esp.join("a/vmlinuz")).unwrap(), b"old kernel a", "the running slot is untouched");
    let text = fs::read_to_string(f.target.esp.join(ENTRIES_DIR).join(&done.entry)).unwrap();
    let options = text.lines().find(|l| l.starts_with("options ")).unwrap();
    assert!(options.contains("caisson.slot=b"), "{options}");
    assert!(options.contains("caisson.root=PARTUUID=00000000-0000-0000-0000-000000001234"), "{options}");
    assert!(options.contains(&format!("caisson.verity={}", "ab".repeat(32))), "{options}");
    assert!(options.ends_with("console=ttyS0,115200 nowatchdog"), "{options}");
    assert!(text.contains("linux /b/vmlinuz\n") && text.contains("initrd /b/initrd\n"), "{text}");
}

fn assert_refused_and_unentered(f: &Fixture, bundle: &[u8], policy: &TrustPolicy, needle: &str) {
    let e = f.install(bundle, policy).unwrap_err().to_string();
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
    assert_eq!(f.entries(), ["caisson-0.1.0-a.conf"], "no entry for slot b after: {e}");
    assert!(
        !fs::read_dir(f.target.esp.join("b")).map(|d| d.flatten().any(|i| i.file_name().to_string_lossy().ends_with(".new"))).unwrap_or(false),
        "temporary files are removed"
    );
}

#[test]
fn tampered_unsigned_truncated_and_foreign_bundles_leave_no_entry() {
    let f = fixture();
    let good = f.bundle("0.2.0", Some(&f.key));
    let len = good.len();
    // A flipped byte in each artifact: root (right after the header), kernel, initrd.
    let header = len - 32 - ROOT_SIZE - 5000 - 700;
    for (at, kind) in [(header + 10, "root"), (header + ROOT_SIZE + 10, "kernel"), (len - 32 - 10, "initrd")] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        assert_refused_and_unentered(&f, &bad, &f.policy(), kind);
    }
    // Cut short inside the kernel, and right before the trailer.
    assert_refused_and_unentered(&f, &good[..header + ROOT_SIZE + 100], &f.policy(), "kernel");
    assert_refused_and_unentered(&f, &good[..len - 32], &f.policy(), "trailer");
    // Unsigned, while the policy wants a signature.
    let unsigned = f.bundle("0.2.0", None);
    assert_refused_and_unentered(&f, &unsigned, &f.policy(), "allow_unsigned");
    // Signed by a key the node does not trust: nothing is written at all.
    let before = f.root_bytes();
    let other = SigningKey::from_seed(&[9u8; 32]);
    assert_refused_and_unentered(&f, &f.bundle("0.2.0", Some(&other)), &f.policy(), &other.public().key_id());
    assert_eq!(f.root_bytes(), before, "an untrusted bundle writes nothing");
    // And the good one still installs.
    f.install(&good, &f.policy()).unwrap();
    // Unsigned is accepted only when the config says so.
    let lax = TrustPolicy { trusted: vec![], allow_unsigned: true };
    let f2 = fixture();
    assert_eq!(f2.install(&unsigned, &lax).unwrap().signed_by, None);
    let _: Option<PublicKey> = None;
}

#[test]
fn preflight_refuses_downgrades_oversized_roots_and_a_running_slot_on_trial() {
    let f = fixture();
    assert_refused_and_unentered(&f, &f.bundle("0.0.9", Some(&f.key)), &f.policy(), "would not boot first");
    let small = Target { root_capacity: 4096, ..f.target.clone() };
    let e = install(Cursor::new(f.bundle("0.2.0", Some(&f.key))), &f.policy(), &small, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("holds 0 MiB"), "{e}");
    fs::rename(
        f.target.esp.join(ENTRIES_DIR).join("caisson-0.1.0-a.conf"),
        f.target.esp.join(ENTRIES_DIR).join("caisson-0.1.0-a+2-1.conf"),
    )
    .unwrap();
    let e = f.install(&f.bundle("0.2.0", Some(&f.key)), &f.policy()).unwrap_err().to_string();
    assert!(e.contains("still on trial"), "{e}");
}

#[test]
fn a_second_upgrade_replaces_the_inactive_slots_entry_and_files() {
    let f = fixture();
    f.install(&f.bundle("0.2.0", Some(&f.key)), &f.policy()).unwrap();
    f.install(&f.bundle("0.3.0", Some(&f.key)), &f.policy()).unwrap();
    assert_eq!(f.entries(), ["caisson-0.3.0-b+3.conf", "caisson-0.1.0-a.conf"]);
    assert_eq!(fs::read(f.target.esp.join("b/initrd")).unwrap(), fs::read(f.dir.path().join("0.3.0-initrd")).unwrap());
}

#[test]
fn boot_bless_and_rollback_follow_the_entries() {
    let f = fixture();
    f.install(&f.bundle("0.2.0", Some(&f.key)), &f.policy()).unwrap();
    let esp = &f.target.esp;
    // systemd-boot tried it once and the node now runs slot b on trial.
    fs::rename(esp.join(ENTRIES_DIR).join("caisson-0.2.0-b+3.conf"), esp.join(ENTRIES_DIR).join("caisson-0.2.0-b+2-1.conf")).unwrap();
    let state = f.dir.path().join("state");
    let b = Upgrades::new(Slot::B, &state);
    assert!(matches!(b.on_boot(esp).unwrap(), BootVerdict::OnTrial { .. }));
    assert_eq!(b.bless(esp, "0.2.0").unwrap(), "caisson-0.2.0-b.conf");
    assert_eq!(b.on_boot(esp).unwrap(), BootVerdict::KnownGood);
    // Roll back to a: b's entry sorts last, a boots next.
    let to = b.rollback(esp, "0.2.0", "admin").unwrap();
    assert_eq!(to.slot, Slot::A);
    assert_eq!(f.entries(), ["caisson-0.1.0-a.conf", "caisson-0.2.0-b+0.conf"]);
    // Back on a: b is bad, its entry cleaned up, the reason kept.
    let a = Upgrades::new(Slot::A, &state);
    assert_eq!(a.on_boot(esp).unwrap(), BootVerdict::KnownGood);
    assert_eq!(f.entries(), ["caisson-0.1.0-a.conf"]);
    let (view, last) = a.slots_view("0.1.0");
    assert_eq!(view[1].state, "bad");
    assert!(view[1].note.as_deref().unwrap_or_default().contains("rolled back from by admin"), "{view:?}");
    assert_eq!(last.unwrap().kind, "rollback");
    // Nothing to roll back to now.
    assert!(a.rollback(esp, "0.1.0", "admin").unwrap_err().to_string().contains("nothing to roll back to"));
}
