//! One build, start to finish: spec → verified artifacts → staging → root
//! tree, initrd, ESP plan → the raw image, the formats `[outputs]` lists
//! (converted from it) and one update bundle, renamed into place only when
//! all have been written and synced. A failure at any
//! step leaves the output directory as it was: outputs are written under
//! temporary names and the staging directory is removed on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caisson_kmod::{KmodError, ModuleIndex};
use caisson_layout::{derive_guid, paths, DiskPlan, PartitionRole, PlanError};
use thiserror::Error;

use crate::bundle::{self, BundleFileError, KeyFileError};
use crate::deb::{Deb, DebError};
use crate::disk::{DiskError, DiskWriter, Fill};
use crate::elf::{self, ElfError, ElfRoot};
use crate::esp::{self, Content, EspError, EspInputs, EspPlan};
use crate::ext4::{self, Ext4Error, Ext4Spec};
use crate::formats::{self, Converter, Format, FormatError};
use crate::initrd::{self, InitrdError, InitrdInput};
use crate::inputs::{bake_plan, verify_artifacts};
use crate::install_payload;
use crate::lock::LockError;
use crate::machine_config::{MachineConfigError, MachineConfigFile};
use crate::ova::{OvaInputs, VmHardware};
use crate::pxe::{self, PxeError};
use crate::rootfs::RootBuilder;
use crate::spec::{LoadedSpec, SpecError};
use crate::squashfs::{self, SquashfsError};
use crate::tree::{self, usr_merged, FsTree, Node, TreeError};
use crate::verity::{self, SealError, SealedRoot};

/// Inside the systemd-boot-efi package.
pub const SYSTEMD_BOOT_EFI: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const MIB: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("--version {version:?} must be non-empty ASCII letters, digits, '.', '_' or '-' ('+' would read as a boot counter in the boot entry's name)")]
    Version { version: String },
    #[error("signing key: {0}")]
    SigningKey(#[from] KeyFileError),
    #[error(transparent)]
    Bundle(#[from] BundleFileError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("disk layout: {0}")]
    Plan(#[from] PlanError),
    #[error("SOURCE_DATE_EPOCH {0} does not fit in 32 bits (squashfs stores u32 times)")]
    Epoch(u64),
    #[error("{what} program {path}: {source}")]
    Program {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} program {path} must be a static ELF executable: {reason}")]
    NotStatic {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "spec key `{key}`: artifact {name:?} is {actual} in the lock, but `{key}` takes {expected}"
    )]
    ArtifactKind {
        key: String,
        name: String,
        actual: &'static str,
        expected: &'static str,
    },
    #[error("spec key `{key}`: {path}: {source}")]
    LocalFile {
        key: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("spec key `{key}`: {file:?} cannot go under {dir}: {reason}")]
    ImageFileName {
        key: String,
        file: String,
        dir: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("artifact {artifact:?}: {reason}")]
    Artifact { artifact: String, reason: String },
    #[error("kernel modules of {kernel_release}: {source}")]
    Kmod {
        kernel_release: String,
        source: KmodError,
    },
    #[error("cannot write the module index to {dir}: {source}")]
    ModuleIndex { dir: PathBuf, source: io::Error },
    #[error("initrd.modules: module {name:?} is not in kernel {kernel_release} (neither a .ko file nor built in)")]
    MissingModule {
        name: String,
        kernel_release: String,
    },
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    MachineConfig(#[from] MachineConfigError),
    #[error("root tree: {0}")]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Squashfs(#[from] SquashfsError),
    #[error("the root image is {size} bytes ({size_mib} MiB) but ROOT-A holds {capacity_mib} MiB; raise disk.root_mib")]
    RootTooBig {
        size: u64,
        size_mib: u64,
        capacity_mib: u64,
    },
    #[error("the root image with its dm-verity hash area is {size} bytes ({squashfs} squashfs + {hash_area} hash area) but ROOT-A holds {capacity_mib} MiB; raise disk.root_mib")]
    RootWithVerityTooBig {
        size: u64,
        squashfs: u64,
        hash_area: u64,
        capacity_mib: u64,
    },
    #[error(transparent)]
    Verity(#[from] SealError),
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Pxe(#[from] PxeError),
    #[error("staging {path}: {source}")]
    Staging { path: PathBuf, source: io::Error },
    #[error("output {path}: {source}")]
    Output { path: PathBuf, source: io::Error },
}

/// Everything a build needs besides the spec's own contents.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub spec: PathBuf,
    pub out_dir: PathBuf,
    /// Overrides for `[programs]`, `[artifacts] dir` and `[artifacts] lock`.
    pub init: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub artifacts_dir: Option<PathBuf>,
    pub lock: Option<PathBuf>,
    /// A machine config to embed; overrides `[image] config`.
    pub config: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH` from the environment; wins over the spec.
    pub source_date_epoch: Option<u64>,
    /// Overrides `[image] version`: one spec, several versions.
    pub version: Option<String>,
    /// A PKCS#8 PEM Ed25519 key that signs the update bundle.
    pub signing_key: Option<PathBuf>,
}

/// What was built, for the log and for tests.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// `<out>/<name>-<version>.raw`; on disk only when `raw` is among
    /// `[outputs] formats` (the default).
    pub image: PathBuf,
    pub image_size: u64,
    /// Every published output but the bundle, in build order, with sizes.
    pub outputs: Vec<formats::Output>,
    /// `<out>/<name>-<version>.bundle`: the same OS for a node's other slot.
    pub bundle: PathBuf,
    pub bundle_size: u64,
    /// Key id of the key that signed the bundle; None: unsigned.
    pub bundle_signed_by: Option<String>,
    pub kernel_release: String,
    pub epoch: u64,
    /// Bytes: bootloader, kernel, initrd.
    pub esp_files: BTreeMap<String, u64>,
    pub squashfs_size: u64,
    /// dm-verity of ROOT-A: root hash, salt, hash offset, hash area size.
    pub verity: SealedRoot,
    pub root_partition_size: u64,
    /// Uncompressed bytes each part of the root adds: `agent`, `payload:
    /// <artifact>` (containerd, runc, …), `k3s: binary`, `k3s: air-gap
    /// <file>`, `image: <file>`, `libraries`, `modules`, `machine config`,
    /// `skeleton`.
    pub root_components: BTreeMap<String, u64>,
    /// Paths of the ELF closure in the root (libraries, loader, symlinks).
    pub closure: Vec<String>,
    pub steps: Vec<(String, Duration)>,
}

struct Steps {
    done: Vec<(String, Duration)>,
}

impl Steps {
    fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T, BuildError>,
    ) -> Result<T, BuildError> {
        let start = Instant::now();
        let out = f()?;
        let took = start.elapsed();
        tracing::info!("{name}: {:.2}s", took.as_secs_f64());
        self.done.push((name.to_string(), took));
        Ok(out)
    }
}

/// Build the image `spec` describes into `<out_dir>/<name>-<version>.raw`.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let mut steps = Steps { done: Vec::new() };
    let mut loaded = LoadedSpec::load(&opts.spec)?;
    if let Some(version) = &opts.version {
        check_version(version)?;
        loaded.spec.image.version = version.clone();
    }
    let spec = &loaded.spec;
    let identity = spec.identity();
    let epoch = opts
        .source_date_epoch
        .unwrap_or(spec.image.source_date_epoch);
    let epoch32 = u32::try_from(epoch).map_err(|_| BuildError::Epoch(epoch))?;
    let plan = DiskPlan::new(&identity, spec.disk.sizes())?;
    let init = opts
        .init
        .clone()
        .unwrap_or_else(|| loaded.resolve(&spec.programs.init));
    let agent = opts
        .agent
        .clone()
        .unwrap_or_else(|| loaded.resolve(&spec.programs.agent));
    check_program("init", &init, true)?;
    check_program("agent", &agent, false)?;
    let machine_config = opts
        .config
        .clone()
        .or_else(|| spec.image.config.as_ref().map(|c| loaded.resolve(c)))
        .map(|path| MachineConfigFile::load(&path))
        .transpose()?;
    let signing_key = opts
        .signing_key
        .as_deref()
        .map(bundle::load_signing_key)
        .transpose()?;

    let verified = steps.run("verify artifacts", || verify_artifacts(&loaded, opts))?;
    let deb = |name: &str| Deb::new(&verified[name].path);
    let baked = bake_plan(&loaded, &verified)?;

    // Staging lives next to the output (room for ~300 MiB, same file
    // system) under a hidden name, and is removed on drop, error or not.
    let out_dir = &opts.out_dir;
    std::fs::create_dir_all(out_dir).map_err(|source| BuildError::Output {
        path: out_dir.clone(),
        source,
    })?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{identity}.staging."))
        .tempdir_in(out_dir)
        .map_err(|source| BuildError::Staging {
            path: out_dir.clone(),
            source,
        })?;
    let stage = |name: &str| staging.path().join(name);

    let kernel = steps.run("extract kernel", || {
        extract_kernel(
            &deb(&spec.kernel.artifact),
            &spec.kernel.artifact,
            &stage("kernel"),
        )
    })?;
    let bootloader = steps.run("extract bootloader", || {
        let artifact = &spec.bootloader.artifact;
        let tree = deb(artifact).extract(&stage("bootloader"), |p| p == SYSTEMD_BOOT_EFI)?;
        match tree.get(SYSTEMD_BOOT_EFI) {
            Some(Node::File {
                source: Some(s), ..
            }) => Ok(s.clone()),
            _ => Err(BuildError::Artifact {
                artifact: artifact.clone(),
                reason: format!("has no {SYSTEMD_BOOT_EFI}"),
            }),
        }
    })?;

    let modules_dir = kernel.modules_dir.clone();
    let kernel_release = kernel.release.clone();
    let index = steps.run("index kernel modules", || {
        let kmod = |source| BuildError::Kmod {
            kernel_release: kernel_release.clone(),
            source,
        };
        let index = ModuleIndex::generate(&modules_dir).map_err(kmod)?;
        for name in &spec.initrd.modules {
            if !index.contains(name) && !index.is_builtin(name) {
                return Err(BuildError::MissingModule {
                    name: name.clone(),
                    kernel_release: kernel_release.clone(),
                });
            }
        }
        index
            .write_to(&modules_dir)
            .map_err(|source| BuildError::ModuleIndex {
                dir: modules_dir.clone(),
                source,
            })?;
        Ok(index)
    })?;

    let initrd_file = stage("initrd");
    let initrd_bytes = steps.run("initrd", || {
        let bytes = initrd::build_initrd(&InitrdInput {
            init_binary: &init,
            kernel_release: &kernel_release,
            modules_dir: &modules_dir,
            index: &index,
            modules: &spec.initrd.modules,
            mtime: epoch,
        })?;
        // The bundle streams it from a file, as it does root and kernel.
        std::fs::write(&initrd_file, &bytes).map_err(|source| BuildError::Staging {
            path: initrd_file.clone(),
            source,
        })?;
        Ok(bytes)
    })?;

    // STATE and DATA: empty ext4 for the raw image and, compressed, for the
    // install payload in the root.
    let ext4_templates = steps.run("ext4", || {
        let mut made = BTreeMap::new();
        for role in [PartitionRole::State, PartitionRole::Data] {
            let size = plan.partition(role).map(|p| p.size).unwrap_or(0);
            let fs = ext4::make(
                &Ext4Spec {
                    label: role.label(),
                    uuid: derive_guid(&identity, &format!("ext4/{}", role.label())),
                    hash_seed: derive_guid(&identity, &format!("ext4-hash-seed/{}", role.label())),
                    size,
                    epoch,
                },
                staging.path(),
            )?;
            made.insert(role, fs);
        }
        Ok(made)
    })?;
    let template = |role: PartitionRole| ext4_templates.get(&role).cloned().unwrap_or_default();

    let mut root = RootBuilder::new();
    steps.run("root tree", || {
        root.skeleton(&spec.image.name, &spec.image.version, &stage("os-release"))?;
        root.base_cmdline(&spec.kernel.cmdline, &stage("cmdline"))?;
        root.add_file("agent", paths::AGENT_PATH, &agent, 0o755)?;
        if let Some(config) = &machine_config {
            config.embed(&mut root, &stage("machine-config.toml"))?;
        }
        let agent_name = paths::AGENT_PATH.trim_start_matches('/').to_string();
        root.elf_roots.push(ElfRoot {
            name: agent_name,
            file: agent.clone(),
        });
        for (i, payload) in spec.payload.iter().enumerate() {
            let dest = stage(&format!("payload-{i}-{}", payload.artifact));
            let tree = extract_with_chains(
                &deb(&payload.artifact),
                &dest,
                &payload.files,
                &payload.artifact,
            )?;
            for file in &payload.files {
                let chain = tree.resolve_chain(file, |p| p.to_string()).map_err(|e| {
                    BuildError::Artifact {
                        artifact: payload.artifact.clone(),
                        reason: format!("payload file {file}: {e}"),
                    }
                })?;
                root.add_chain(
                    &format!("payload: {}", payload.artifact),
                    &tree,
                    &chain,
                    &payload.artifact,
                )?;
            }
        }
        root.add_baked(&baked)?;
        install_payload::add(
            &mut root,
            &install_payload::PayloadInputs {
                version: &spec.image.version,
                kernel_release: &kernel_release,
                sizes: spec.disk.sizes(),
                bootloader: &bootloader,
                kernel: &kernel.vmlinuz,
                initrd: &initrd_file,
                state: &template(PartitionRole::State),
                data: &template(PartitionRole::Data),
            },
            staging.path(),
        )?;
        let mut libs = FsTree::new();
        for name in &spec.libraries.artifacts {
            let tree = deb(name).extract(&stage(&format!("lib-{name}")), |p| {
                !p.starts_with("usr/share/")
            })?;
            for (path, node) in tree.iter() {
                libs.insert(&usr_merged(path), node.clone())?;
            }
        }
        let closure = elf::closure(&root.elf_roots, &libs, elf::read_deps)?;
        for path in &closure {
            let node = libs.get(path).cloned().ok_or_else(|| TreeError::Dangling {
                start: path.clone(),
                path: path.clone(),
            })?;
            root.insert("libraries", path, node)?;
        }
        root.closure = closure.into_iter().collect();
        let image_modules = format!(
            "{}/{}",
            paths::MODULES_ROOT.trim_start_matches('/'),
            kernel_release
        );
        root.add_host_dir("modules", &modules_dir, &image_modules)?;
        root.tree.check_symlinks()?;
        Ok(())
    })?;

    let root_part = plan
        .partition(PartitionRole::RootA)
        .map(|p| p.size)
        .unwrap_or(0);
    let squashfs_file = stage("root.squashfs");
    let squashfs_size = steps.run("squashfs", || {
        let size = squashfs::write(&root.tree, epoch32, &squashfs_file)?;
        if size > root_part {
            return Err(BuildError::RootTooBig {
                size,
                size_mib: size.div_ceil(MIB),
                capacity_mib: root_part / MIB,
            });
        }
        Ok(size)
    })?;
    // The hash area follows the squashfs in the same file, so ROOT-A (and,
    // later, an update bundle) carries data and tree as one image.
    let sealed = steps.run("verity", || {
        let sealed = verity::seal(&squashfs_file, &identity)?;
        if sealed.image_size > root_part {
            return Err(BuildError::RootWithVerityTooBig {
                size: sealed.image_size,
                squashfs: sealed.data_size,
                hash_area: sealed.hash_area_size,
                capacity_mib: root_part / MIB,
            });
        }
        Ok(sealed)
    })?;

    let root_a = plan
        .partition(PartitionRole::RootA)
        .map(|p| p.part_guid)
        .unwrap_or_default();
    let esp_plan = EspPlan::new(EspInputs {
        version: &spec.image.version,
        root_a_partuuid: root_a,
        verity: caisson_layout::RootVerity::Verified(sealed.params.clone()),
        cmdline: &spec.kernel.cmdline,
        bootloader: Content::host_file(&bootloader)?,
        kernel: Content::host_file(&kernel.vmlinuz)?,
        initrd: Content::Bytes(initrd_bytes),
    });
    let esp_files = esp_plan
        .files
        .iter()
        .map(|(p, c)| (p.clone(), c.len()))
        .collect();

    let image = out_dir.join(format!("{identity}.raw"));
    let mut partial = tempfile::Builder::new()
        .prefix(&format!(".{identity}."))
        .suffix(".raw.partial")
        .tempfile_in(out_dir)
        .map_err(|source| BuildError::Output {
            path: out_dir.clone(),
            source,
        })?;
    let partial_path = partial.path().to_path_buf();
    steps.run("disk image", || {
        let target = partial_path.display().to_string();
        let output = |source| BuildError::Output {
            path: partial_path.clone(),
            source,
        };
        // A fresh sparse file: reads as zeros, so zero blocks are skipped.
        partial.as_file().set_len(plan.size).map_err(output)?;
        let mut disk = DiskWriter::new(partial.as_file_mut(), target, plan.clone(), 512)?;
        disk.write_gpt()?;
        esp_plan.write(
            disk.volume(PartitionRole::Esp)?,
            esp::volume_id(&identity),
            epoch,
        )?;
        disk.fill_from(
            PartitionRole::RootA,
            "root squashfs with its dm-verity hash area",
            &squashfs_file,
            Fill::SkipZeros,
        )?;
        for role in [PartitionRole::State, PartitionRole::Data] {
            disk.fill_from(
                role,
                &format!("{} ext4", role.label()),
                &template(role),
                Fill::SkipZeros,
            )?;
        }
        disk.sync()?;
        Ok(())
    })?;

    let (bundle_partial, bundle_size) = steps.run("bundle", || {
        let inputs = bundle::BuildInputs {
            spec,
            kernel_release: &kernel_release,
            epoch,
            verity: &sealed.params,
            root: &squashfs_file,
            kernel: &kernel.vmlinuz,
            initrd: &initrd_file,
        };
        Ok(bundle::write_partial(
            out_dir,
            &inputs,
            signing_key.as_ref(),
        )?)
    })?;
    let bundle_path = out_dir.join(bundle::file_name(&identity));

    // The formats the spec lists; qcow2, VMDK and OVA are converted from
    // the raw image, which is published only when listed itself.
    let mut converter = Converter::new(
        &partial_path,
        out_dir,
        OvaInputs {
            name: &spec.image.name,
            version: &spec.image.version,
            hardware: VmHardware {
                cpus: spec.outputs.ova.cpus,
                memory_mib: spec.outputs.ova.memory_mib,
            },
            epoch,
        },
    );
    let mut pxe_partial = None;
    for format in spec.outputs.in_build_order() {
        match format {
            Format::Raw => {}
            Format::Qcow2 | Format::Vmdk | Format::Ova => {
                steps.run(&format!("{format} image"), || Ok(converter.make(format)?))?
            }
            // `<identity>.pxe/`: the same kernel, initrd and sealed root.
            Format::Pxe => {
                let inputs = pxe::PxeInputs {
                    kernel: &kernel.vmlinuz,
                    initrd: &initrd_file,
                    root_image: &squashfs_file,
                    verity: &sealed.params,
                    cmdline: &spec.kernel.cmdline,
                    mtime: epoch,
                };
                pxe_partial = Some(steps.run("pxe", || {
                    pxe::check_modules(
                        &spec.initrd.modules,
                        index.is_builtin("loop"),
                        &kernel_release,
                    )?;
                    Ok(pxe::write_partial(out_dir, &identity, &inputs)?)
                })?);
            }
        }
    }
    let mut pending: Vec<(tempfile::NamedTempFile, PathBuf, Option<Format>)> = Vec::new();
    if spec.outputs.wants(Format::Raw) {
        pending.push((partial, image.clone(), Some(Format::Raw)));
    }
    for p in converter.finish(spec.outputs.wants(Format::Vmdk)) {
        pending.push((p.file, p.path, Some(p.format)));
    }
    pending.push((bundle_partial, bundle_path.clone(), None));
    // The PXE directory first; removed again if a file cannot be published.
    let pxe_dir = match &pxe_partial {
        Some((partial, _)) => {
            let dir = out_dir.join(pxe::dir_name(&identity));
            pxe::publish(partial.path(), &dir)?;
            Some(dir)
        }
        None => None,
    };
    let mut outputs = publish_all(pending).inspect_err(|_| {
        if let Some(dir) = &pxe_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    })?;
    if let Some(dir) = pxe_dir {
        let (size, allocated) = pxe::measure(&dir)?;
        outputs.push(formats::Output {
            format: Format::Pxe,
            path: dir,
            size,
            allocated,
        });
    }

    let image_size = plan.size;
    Ok(BuildReport {
        image,
        image_size,
        outputs,
        bundle: bundle_path,
        bundle_size,
        bundle_signed_by: signing_key.as_ref().map(|k| k.public().key_id()),
        kernel_release,
        epoch,
        esp_files,
        squashfs_size,
        verity: sealed,
        root_partition_size: root_part,
        root_components: root.components,
        closure: root.closure,
        steps: steps.done,
    })
}

/// The spec's rule for `[image] version`, for the `--version` override.
fn check_version(version: &str) -> Result<(), BuildError> {
    let ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BuildError::Version {
            version: version.to_string(),
        })
    }
}

fn check_program(what: &'static str, path: &Path, must_be_static: bool) -> Result<(), BuildError> {
    let meta = std::fs::metadata(path).map_err(|source| BuildError::Program {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        let source = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(BuildError::Program {
            what,
            path: path.to_path_buf(),
            source,
        });
    }
    if must_be_static {
        let not_static = |reason: String| BuildError::NotStatic {
            what,
            path: path.to_path_buf(),
            reason,
        };
        match elf::read_deps(path) {
            Ok(Some(deps)) if deps.is_static() => {}
            Ok(Some(deps)) => {
                return Err(not_static(format!(
                    "it needs {:?} and {:?}",
                    deps.interpreter, deps.needed
                )))
            }
            Ok(None) => return Err(not_static("not an ELF file".into())),
            Err(e) => return Err(not_static(e.to_string())),
        }
    }
    Ok(())
}

struct KernelFiles {
    release: String,
    vmlinuz: PathBuf,
    modules_dir: PathBuf,
}

fn extract_kernel(deb: &Deb, artifact: &str, dest: &Path) -> Result<KernelFiles, BuildError> {
    let tree = deb.extract(dest, |p| {
        p.starts_with("boot/vmlinuz-") || p.starts_with("lib/modules/")
    })?;
    let releases: Vec<String> = tree
        .iter_under("lib/modules")
        .filter(|(p, n)| matches!(n, Node::Dir { .. }) && p.matches('/').count() == 2)
        .map(|(p, _)| p.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    let bad = |reason: String| BuildError::Artifact {
        artifact: artifact.to_string(),
        reason,
    };
    let [release] = releases.as_slice() else {
        return Err(bad(format!(
            "expected exactly one lib/modules/<release>, found {releases:?}"
        )));
    };
    let vmlinuz = format!("boot/vmlinuz-{release}");
    let Some(Node::File {
        source: Some(vmlinuz),
        ..
    }) = tree.get(&vmlinuz)
    else {
        return Err(bad(format!("has no {vmlinuz}")));
    };
    Ok(KernelFiles {
        release: release.clone(),
        vmlinuz: vmlinuz.clone(),
        modules_dir: dest.join("lib/modules").join(release),
    })
}

/// Extract `files` from a payload package, plus whatever their symlinks
/// point at (a second pass only when a listed file is a symlink).
fn extract_with_chains(
    deb: &Deb,
    dest: &Path,
    files: &[String],
    artifact: &str,
) -> Result<FsTree, BuildError> {
    let mut wanted: BTreeSet<String> = files
        .iter()
        .map(|f| tree::normalize(f))
        .collect::<Result<_, _>>()?;
    for _pass in 0..2 {
        let tree = deb.extract(dest, |p| wanted.contains(p))?;
        let mut missing = BTreeSet::new();
        for file in files {
            let chain =
                tree.resolve_chain(file, |p| p.to_string())
                    .map_err(|e| BuildError::Artifact {
                        artifact: artifact.to_string(),
                        reason: format!("payload file {file}: {e}"),
                    })?;
            for p in chain {
                if let Some(Node::File { source: None, .. }) = tree.get(&p) {
                    missing.insert(p);
                }
            }
        }
        if missing.is_empty() {
            return Ok(tree);
        }
        wanted.extend(missing);
    }
    Err(BuildError::Artifact {
        artifact: artifact.to_string(),
        reason: "symlink targets could not be extracted".into(),
    })
}

/// Publish every output or none: when one cannot be renamed into place,
/// those already published are removed (the rest are still temporaries,
/// deleted on drop). Returns the published formats, measured.
fn publish_all(
    pending: Vec<(tempfile::NamedTempFile, PathBuf, Option<Format>)>,
) -> Result<Vec<formats::Output>, BuildError> {
    let mut done: Vec<(PathBuf, Option<Format>)> = Vec::new();
    let mut pending = pending.into_iter();
    let failed = loop {
        let Some((partial, path, format)) = pending.next() else {
            break None;
        };
        match publish(partial, &path) {
            Ok(()) => done.push((path, format)),
            Err(e) => break Some(e),
        }
    };
    let measured = match failed {
        None => done
            .iter()
            .filter_map(|(path, format)| format.map(|f| (f, path)))
            .map(|(f, path)| {
                formats::Output::measure(f, path).map_err(|source| BuildError::Output {
                    path: path.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>(),
        Some(e) => Err(e),
    };
    if measured.is_err() {
        for (path, _) in &done {
            let _ = std::fs::remove_file(path);
        }
    }
    measured
}

/// Make the finished image visible under its final name, durably.
fn publish(partial: tempfile::NamedTempFile, image: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let out = |source| BuildError::Output {
        path: image.to_path_buf(),
        source,
    };
    partial
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(out)?;
    partial.persist(image).map_err(|e| out(e.error))?;
    if let Some(dir) = image.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(out)?;
    }
    Ok(())
}
