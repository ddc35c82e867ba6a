//! The root under dm-verity. The boot entry carries the root hash, salt and
//! hash offset; nothing is read from the (untrusted) superblock on disk.
//!
//! The table is first loaded without a corruption option, so a bad block
//! read while mounting fails with EIO and `init` can say what happened in
//! one FATAL line before rebooting. Once the root is mounted and the agent
//! found, the table is swapped for one with `restart_on_corruption`: from
//! then on a bad block restarts the machine rather than handing an I/O
//! error to a half-working system.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use caisson_devices::BlockDevice;
use caisson_layout::paths::ROOT_VERITY_DM_NAME;
use caisson_layout::{CaissonParams, RootVerity, VerityParams};
use caisson_verity::{Digest, OnCorruption, VerityTarget};
use nix::errno::Errno;
use nix::sys::stat::{major, makedev, minor, mknod, Mode, SFlag};

use crate::dm::{self, Control};
use crate::error::InitError;

/// `/dev/mapper/caisson-root`: made by us, as there is no udev.
pub fn mapper_path() -> PathBuf {
    Path::new("/dev/mapper").join(ROOT_VERITY_DM_NAME)
}

/// What the entry asks for. An entry that says nothing is refused: an
/// unverified boot must be asked for with `caisson.verity=off`.
pub fn mode(params: &CaissonParams) -> Result<&RootVerity, InitError> {
    params.verity.as_ref().ok_or(InitError::VerityUnspecified)
}

/// "1a2b3c4d5e6f…", for log lines.
pub fn short_hash(root_hash: &str) -> String {
    // `get` rather than indexing: never panic on a char boundary.
    format!("{}…", root_hash.get(..12).unwrap_or(root_hash))
}

/// A live verity device over the root partition.
pub struct ActiveVerity {
    control: Control,
    target: VerityTarget,
    pub node: PathBuf,
    pub root_hash: String,
}

/// Create `caisson-root` over `device` and make its node.
pub fn open(device: &BlockDevice, params: &VerityParams) -> Result<ActiveVerity, InitError> {
    let setup = |reason: String| InitError::VeritySetup {
        device: device.dev_path.clone(),
        reason,
    };
    // The tree's first block must at least exist; the kernel checks the rest.
    let needed = params.hash_offset + 2 * caisson_verity::BLOCK_SIZE;
    if device.size_bytes < needed {
        return Err(setup(format!(
            "the partition is {} bytes, but caisson.verity.hashoffset={} needs at least {needed}",
            device.size_bytes, params.hash_offset
        )));
    }
    let meta = std::fs::metadata(&device.dev_path).map_err(|e| setup(format!("stat: {e}")))?;
    if !meta.file_type().is_block_device() {
        return Err(setup("not a block device".into()));
    }
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    let dev = format!("{}:{}", major(rdev), minor(rdev));
    let target = VerityTarget::appended(
        &dev,
        params.hash_offset,
        decode_root_hash(&params.root_hash).map_err(&setup)?,
        hex::decode(&params.salt).map_err(|e| setup(format!("salt: {e}")))?,
        OnCorruption::Eio,
    );
    let control = Control::open()?;
    let number = control.create(ROOT_VERITY_DM_NAME)?;
    control.load_read_only(ROOT_VERITY_DM_NAME, &[table(&target)])?;
    control.resume(ROOT_VERITY_DM_NAME)?;
    let node = mapper_path();
    make_node(&node, number)?;
    Ok(ActiveVerity {
        control,
        target,
        node,
        root_hash: params.root_hash.clone(),
    })
}

fn decode_root_hash(text: &str) -> Result<Digest, String> {
    let bytes = hex::decode(text).map_err(|e| format!("root hash: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "root hash: not 32 bytes".to_string())
}

fn table(target: &VerityTarget) -> dm::Target {
    dm::Target {
        start: 0,
        length: target.sectors(),
        kind: "verity".into(),
        text: target.params(),
    }
}

fn make_node(node: &Path, number: dm::DevNumber) -> Result<(), InitError> {
    if let Some(dir) = node.parent() {
        crate::steps::create_dir(dir)?;
    }
    let dev = makedev(u64::from(number.major), u64::from(number.minor));
    match mknod(node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(InitError::MakeNode {
            path: node.to_path_buf(),
            errno,
        }),
    }
}

impl ActiveVerity {
    /// The kernel's table line, for the log.
    pub fn table_line(&self) -> String {
        self.target.table_line()
    }

    /// Whether the kernel has seen a block that does not match the tree
    /// (`C` in the verity target's status); `None` if it cannot be asked.
    pub fn corrupted(&self) -> Option<bool> {
        let targets = self.control.status(ROOT_VERITY_DM_NAME).ok()?;
        Some(
            targets
                .iter()
                .any(|t| t.kind == "verity" && t.text.starts_with('C')),
        )
    }

    /// From now on a corrupt block restarts the machine.
    pub fn restart_on_corruption(&mut self) -> Result<(), InitError> {
        self.target.on_corruption = OnCorruption::Restart;
        self.control
            .load_read_only(ROOT_VERITY_DM_NAME, &[table(&self.target)])?;
        self.control.resume(ROOT_VERITY_DM_NAME)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisson_layout::{KernelCmdline, RootSpec, Slot};

    #[test]
    fn an_entry_without_caisson_verity_is_refused_and_off_is_allowed() {
        let params = |extra: &str| {
            CaissonParams::from_cmdline(&KernelCmdline::parse(&format!(
                "caisson.slot=a caisson.root=PARTLABEL=ROOT-A {extra}"
            )))
            .unwrap()
        };
        let e = mode(&params("")).unwrap_err().to_string();
        assert!(e.contains("caisson.verity=off"), "{e}");
        assert_eq!(
            mode(&params("caisson.verity=off")).unwrap(),
            &RootVerity::Off
        );
        let p = params(&format!(
            "caisson.verity={} caisson.verity.salt=ab caisson.verity.hashoffset=8192",
            "0f".repeat(32)
        ));
        assert!(matches!(mode(&p).unwrap(), RootVerity::Verified(_)));
        assert_eq!(p.slot, Slot::A);
        assert_eq!(p.root, RootSpec::PartLabel("ROOT-A".into()));
    }

    #[test]
    fn table_covers_the_data_blocks_and_starts_in_eio_mode() {
        let target = VerityTarget::appended(
            "254:2",
            8192,
            decode_root_hash(&"0f".repeat(32)).unwrap(),
            vec![0xab],
            OnCorruption::Eio,
        );
        let t = table(&target);
        assert_eq!((t.start, t.length, t.kind.as_str()), (0, 16, "verity"));
        assert_eq!(
            t.text,
            format!("1 254:2 254:2 4096 4096 2 3 sha256 {} ab", "0f".repeat(32))
        );
        assert!(decode_root_hash("abcd").is_err());
        assert_eq!(short_hash(&"0f".repeat(32)), "0f0f0f0f0f0f…");
    }
}
