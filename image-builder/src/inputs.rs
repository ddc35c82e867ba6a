//! What the spec names, made concrete before anything is read: every
//! artifact checked against the lock (kind, presence, sha256), and the
//! files `[k3s]` and `[[images]]` bake resolved to host files with their
//! places in the root.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;

use caisson_layout::paths;

use crate::build::{BuildError, BuildOptions};
use crate::lock::{self, Kind, Lock, Origin};
use crate::spec::{LoadedSpec, Source};

/// A host file baked into the root as it is: k3s, an image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Baked {
    /// Absolute, e.g. `/usr/lib/caisson/images/k3s/k3s-airgap-images-amd64.tar.zst`.
    pub(crate) image_path: String,
    pub(crate) host: PathBuf,
    pub(crate) mode: u32,
    /// Its line in the size report.
    pub(crate) component: String,
}

/// A pinned artifact found in `artifacts/` with the sha256 of the lock.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) path: PathBuf,
    /// Its name in `artifacts/`; a file artifact keeps it in the image.
    pub(crate) file_name: String,
}

/// Every artifact the spec names, checked against the lock before any is
/// read: each must be the kind its spec key takes (a Debian package for the
/// kernel, bootloader, payload and libraries; a plain file for k3s and
/// image archives), present, and of the pinned sha256.
pub(crate) fn verify_artifacts(
    loaded: &LoadedSpec,
    opts: &BuildOptions,
) -> Result<BTreeMap<String, Verified>, BuildError> {
    let spec = &loaded.spec;
    let lock_path = opts
        .lock
        .clone()
        .unwrap_or_else(|| loaded.resolve(&spec.artifacts.lock));
    let dir = opts
        .artifacts_dir
        .clone()
        .unwrap_or_else(|| loaded.resolve(&spec.artifacts.dir));
    let lock = Lock::load(&lock_path)?;
    let mut named: Vec<(String, &str, Kind)> = vec![
        ("kernel.artifact".into(), &spec.kernel.artifact, Kind::Deb),
        (
            "bootloader.artifact".into(),
            &spec.bootloader.artifact,
            Kind::Deb,
        ),
    ];
    for (i, p) in spec.payload.iter().enumerate() {
        named.push((format!("payload[{i}].artifact"), &p.artifact, Kind::Deb));
    }
    for (i, name) in spec.libraries.artifacts.iter().enumerate() {
        named.push((format!("libraries.artifacts[{i}]"), name, Kind::Deb));
    }
    if let Some(k3s) = &spec.k3s {
        if let Some(name) = &k3s.artifact {
            named.push(("k3s.artifact".into(), name, Kind::File));
        }
        for (i, name) in k3s.airgap_images.iter().enumerate() {
            named.push((format!("k3s.airgap_images[{i}]"), name, Kind::File));
        }
    }
    for (i, image) in spec.images.iter().enumerate() {
        if let Some(name) = &image.artifact {
            named.push((format!("images[{i}].artifact"), name, Kind::File));
        }
    }
    let describe = |kind: Kind| match kind {
        Kind::Deb => "a Debian package",
        Kind::File => "a plain file (kind = \"file\")",
    };
    let mut artifacts = BTreeMap::new();
    for (key, name, want) in named {
        let artifact = lock.get(&lock_path, name)?;
        let kind = match artifact.origin {
            Origin::Deb(_) => Kind::Deb,
            Origin::File(_) => Kind::File,
        };
        if kind != want {
            return Err(BuildError::ArtifactKind {
                key,
                name: name.to_string(),
                actual: describe(kind),
                expected: describe(want),
            });
        }
        artifacts.insert(name.to_string(), artifact);
    }
    let mut out = BTreeMap::new();
    for (name, artifact) in artifacts {
        let path = lock::verify(&dir, artifact)?;
        let file_name = artifact.file_name();
        out.insert(name, Verified { path, file_name });
    }
    Ok(out)
}

/// What `[k3s]` and `[[images]]` put in the root, resolved to host files,
/// with their image file names checked: one name per directory, and
/// nothing in `IMAGES_DIR` may be called like the `k3s` directory.
pub(crate) fn bake_plan(
    loaded: &LoadedSpec,
    verified: &BTreeMap<String, Verified>,
) -> Result<Vec<Baked>, BuildError> {
    let spec = &loaded.spec;
    let resolve = |key: String, source: Source| -> Result<(PathBuf, String), BuildError> {
        match source {
            Source::Artifact(name) => {
                // verify_artifacts saw every name the spec gives.
                let v = verified.get(name).ok_or_else(|| BuildError::Artifact {
                    artifact: name.to_string(),
                    reason: format!("named by `{key}` but not verified"),
                })?;
                Ok((v.path.clone(), v.file_name.clone()))
            }
            Source::Path(p) => {
                let path = loaded.resolve(p);
                let local = |source| BuildError::LocalFile {
                    key: key.clone(),
                    path: path.clone(),
                    source,
                };
                let meta = std::fs::metadata(&path).map_err(local)?;
                if !meta.is_file() {
                    return Err(local(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file",
                    )));
                }
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok((path, name))
            }
        }
    };
    let mut baked = Vec::new();
    let mut taken: BTreeSet<(&'static str, String)> = BTreeSet::new();
    let mut place = |key: String,
                     dir: &'static str,
                     (host, file): (PathBuf, String),
                     component: String|
     -> Result<Baked, BuildError> {
        let refuse = |reason: &str| BuildError::ImageFileName {
            key: key.clone(),
            file: file.clone(),
            dir,
            reason: reason.to_string(),
        };
        if !lock::is_plain_file_name(&file) {
            return Err(refuse("not a plain file name"));
        }
        if format!("{dir}/{file}") == paths::K3S_IMAGES_DIR {
            return Err(refuse("the name of k3s's air-gap images directory"));
        }
        if !taken.insert((dir, file.clone())) {
            return Err(refuse("another archive already has this name"));
        }
        Ok(Baked {
            image_path: format!("{dir}/{file}"),
            host,
            mode: 0o644,
            component: format!("{component} {file}"),
        })
    };
    if let Some(k3s) = &spec.k3s {
        let (key, source) = match k3s.binary() {
            s @ Source::Artifact(_) => ("k3s.artifact", s),
            s @ Source::Path(_) => ("k3s.binary_path", s),
        };
        let (host, _) = resolve(key.into(), source.clone())?;
        if let Source::Path(_) = source {
            tracing::warn!(
                "k3s: {} is a local file, not pinned in artifacts.lock (test images only)",
                host.display()
            );
        }
        baked.push(Baked {
            image_path: paths::K3S_BINARY.to_string(),
            host,
            mode: 0o755,
            component: "k3s: binary".to_string(),
        });
        for (i, name) in k3s.airgap_images.iter().enumerate() {
            let key = format!("k3s.airgap_images[{i}]");
            let file = resolve(key.clone(), Source::Artifact(name))?;
            baked.push(place(
                key,
                paths::K3S_IMAGES_DIR,
                file,
                "k3s: air-gap".into(),
            )?);
        }
    }
    for (i, image) in spec.images.iter().enumerate() {
        let key = match image.source() {
            Source::Artifact(_) => format!("images[{i}].artifact"),
            Source::Path(_) => format!("images[{i}].path"),
        };
        let file = resolve(key.clone(), image.source())?;
        baked.push(place(key, paths::IMAGES_DIR, file, "image:".into())?);
    }
    Ok(baked)
}
