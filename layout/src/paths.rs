//! Well-known paths inside the initramfs and the root image.

/// Where `init` mounts the new root before switching to it.
pub const SYSROOT: &str = "/sysroot";
/// The agent, executed by `init` as PID 1 after `switch_root`.
pub const AGENT_PATH: &str = "/usr/bin/node-agent";
/// os-release of the image, carrying its version.
pub const OS_RELEASE: &str = "/usr/lib/os-release";
/// A machine config embedded in the image (`image-builder build --config`),
/// the second config source after STATE.
pub const EMBEDDED_CONFIG: &str = "/usr/lib/caisson/config.toml";
/// The image's base kernel command line (the spec's `[kernel] cmdline`
/// words, one line): what the agent puts after an entry's `caisson.*` words
/// and before the machine config's `kernel.args` when it rewrites the entry.
pub const BASE_CMDLINE: &str = "/usr/lib/caisson/cmdline";
/// The k3s binary of an image with a `[k3s]` section (the official static
/// release; a test image may carry a stand-in here instead).
pub const K3S_BINARY: &str = "/usr/bin/k3s";
/// Image archives (OCI layout or docker-archive tars, possibly compressed)
/// baked by the spec's `[[images]]`, one file each, for system containers.
pub const IMAGES_DIR: &str = "/usr/lib/caisson/images";
/// k3s's air-gap image archives (`[k3s] airgap_images`), e.g.
/// `k3s-airgap-images-amd64.tar.zst`.
pub const K3S_IMAGES_DIR: &str = "/usr/lib/caisson/images/k3s";
/// Kernel modules of the image: `<MODULES_ROOT>/<kernel release>/`.
pub const MODULES_ROOT: &str = "/usr/lib/modules";
/// In the initramfs: the modules `init` must load, one name per line. Their
/// dependencies come from the pruned `modules.dep` next to them.
pub const INITRD_MODULE_LIST: &str = "/etc/caisson/initrd-modules";
/// In the initramfs: the kernel release the modules belong to.
pub const INITRD_KERNEL_RELEASE: &str = "/etc/caisson/kernel-release";
/// Written by `init` for the agent: the block device the root came from,
/// e.g. `vda2` (a name under `/sys/class/block`).
pub const ROOT_DEVICE_HINT: &str = "/run/caisson/root-device";
/// Where the PXE initramfs carries the root image (squashfs + dm-verity
/// hash area) for a live boot: `caisson.root=initrd:/caisson/root.img`.
pub const INITRD_ROOT_IMAGE: &str = "/caisson/root.img";
/// Written by `init` when the root is read through a loop device (a live
/// boot): one line, the file the loop device reads, as `init` saw it
/// (e.g. `/caisson/root.img` in the initramfs). `ROOT_DEVICE_HINT` then
/// names the loop device (`loop0`).
pub const ROOT_BACKING_HINT: &str = "/run/caisson/root-backing";
/// Written by `init` for the agent's health gate: one line, the dm-verity
/// root hash the root was mounted under (64 hex digits), or `off`.
pub const ROOT_VERITY_HINT: &str = "/run/caisson/root-verity";
/// The dm-verity device `init` mounts the root from: `/dev/mapper/<name>`.
pub const ROOT_VERITY_DM_NAME: &str = "caisson-root";
/// STATE is mounted here, mode 0700, for the agent alone.
pub const STATE_MOUNT: &str = "/run/caisson/state";
/// DATA is mounted here.
pub const DATA_MOUNT: &str = "/var";
/// Directories that must exist in the read-only root as mount points.
pub const ROOT_MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "run", "tmp", "var", "etc", "boot"];
