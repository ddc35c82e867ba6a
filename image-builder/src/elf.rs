//! The ELF closure of the payload: the dynamic loader (`PT_INTERP`) and
//! every shared library (`DT_NEEDED`, recursively) that the payload binaries
//! need, resolved the way glibc's loader would in Debian's library
//! directories, over the library packages named in the spec.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use goblin::elf::Elf;
use thiserror::Error;

use crate::tree::{usr_merged, FsTree, Node, TreeError};

/// Where Debian's loader looks for x86-64 libraries, as package paths. They
/// map to two directories of the usr-merged root.
pub const LIBRARY_DIRS: [&str; 3] = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64"];

#[derive(Debug, Error)]
pub enum ElfError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid ELF file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("library {soname} needed by {needed_by} is not in any library package (searched {dirs} in the [libraries] artifacts)")]
    Unresolved {
        soname: String,
        needed_by: String,
        dirs: String,
    },
    #[error(
        "{what} {name} needed by {needed_by} does not resolve in the library packages: {source}"
    )]
    Broken {
        what: &'static str,
        name: String,
        needed_by: String,
        source: TreeError,
    },
    #[error("{path} (needed by {needed_by}) is listed in its package but was not extracted")]
    NotExtracted { path: String, needed_by: String },
}

/// What one ELF file asks of the dynamic loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfDeps {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
}

impl ElfDeps {
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }
}

/// Parse `PT_INTERP` and `DT_NEEDED`. Not an ELF file → `None` (scripts
/// need nothing from us).
pub fn read_deps(path: &Path) -> Result<Option<ElfDeps>, ElfError> {
    let bytes = std::fs::read(path).map_err(|source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let elf = Elf::parse(&bytes).map_err(|e| ElfError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Some(ElfDeps {
        interpreter: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
    }))
}

/// One binary whose needs the closure must satisfy.
#[derive(Debug, Clone)]
pub struct ElfRoot {
    /// Its path in the image, for error messages.
    pub name: String,
    /// Its bytes on the host.
    pub file: PathBuf,
}

/// Every path of `libs` (a usr-merged tree of the library packages) that the
/// roots need: each symlink on the way and the file it ends at, in sorted
/// order. `deps_of` reads an ELF file's needs (normally [`read_deps`]).
pub fn closure(
    roots: &[ElfRoot],
    libs: &FsTree,
    mut deps_of: impl FnMut(&Path) -> Result<Option<ElfDeps>, ElfError>,
) -> Result<BTreeSet<String>, ElfError> {
    let mut included = BTreeSet::new();
    let mut queue: VecDeque<ElfRoot> = roots.iter().cloned().collect();
    let mut visited_files = BTreeSet::new();
    while let Some(binary) = queue.pop_front() {
        if !visited_files.insert(binary.file.clone()) {
            continue;
        }
        let Some(deps) = deps_of(&binary.file)? else {
            continue;
        };
        let mut wanted = Vec::new();
        if let Some(interp) = &deps.interpreter {
            let chain =
                libs.resolve_chain(interp, usr_merged)
                    .map_err(|source| ElfError::Broken {
                        what: "interpreter",
                        name: interp.clone(),
                        needed_by: binary.name.clone(),
                        source,
                    })?;
            wanted.push(chain);
        }
        for soname in &deps.needed {
            wanted.push(resolve_soname(libs, soname, &binary.name)?);
        }
        for chain in wanted {
            let Some(last) = chain.last().cloned() else {
                continue;
            };
            let new = !included.contains(&last);
            included.extend(chain);
            if !new {
                continue;
            }
            match libs.get(&last) {
                Some(Node::File {
                    source: Some(file), ..
                }) => queue.push_back(ElfRoot {
                    name: last,
                    file: file.clone(),
                }),
                _ => {
                    return Err(ElfError::NotExtracted {
                        path: last,
                        needed_by: binary.name.clone(),
                    })
                }
            }
        }
    }
    Ok(included)
}

fn resolve_soname(libs: &FsTree, soname: &str, needed_by: &str) -> Result<Vec<String>, ElfError> {
    let broken = |source| ElfError::Broken {
        what: "library",
        name: soname.to_string(),
        needed_by: needed_by.to_string(),
        source,
    };
    if soname.contains('/') {
        return libs.resolve_chain(soname, usr_merged).map_err(broken);
    }
    for dir in LIBRARY_DIRS {
        let candidate = usr_merged(&format!("{dir}/{soname}"));
        if libs.get(&candidate).is_some() {
            return libs.resolve_chain(&candidate, usr_merged).map_err(broken);
        }
    }
    Err(ElfError::Unresolved {
        soname: soname.to_string(),
        needed_by: needed_by.to_string(),
        dirs: LIBRARY_DIRS.map(|d| format!("/{d}")).join(", "),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn lib(tree: &mut FsTree, path: &str) {
        let node = Node::File {
            mode: 0o644,
            size: 1,
            source: Some(PathBuf::from(format!("/host/{path}"))),
        };
        tree.insert(path, node).unwrap();
    }

    /// A library universe shaped like libc6 + libseccomp2 after usr-merge.
    fn universe() -> (FsTree, BTreeMap<PathBuf, ElfDeps>) {
        let mut t = FsTree::new();
        lib(&mut t, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        lib(&mut t, "usr/lib/x86_64-linux-gnu/libc.so.6");
        lib(&mut t, "usr/lib/x86_64-linux-gnu/libm.so.6");
        lib(&mut t, "usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4");
        let link = |target: &str| Node::Symlink {
            target: target.into(),
        };
        t.insert(
            "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
            link("libseccomp.so.2.5.4"),
        )
        .unwrap();
        t.insert(
            "usr/lib64/ld-linux-x86-64.so.2",
            link("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        let interp = Some("/lib64/ld-linux-x86-64.so.2".to_string());
        let deps = BTreeMap::from([
            (
                PathBuf::from("/payload/runc"),
                ElfDeps {
                    interpreter: interp.clone(),
                    needed: vec!["libseccomp.so.2".into(), "libc.so.6".into()],
                },
            ),
            (PathBuf::from("/payload/static"), ElfDeps::default()),
            (
                PathBuf::from("/payload/bad"),
                ElfDeps {
                    interpreter: interp,
                    needed: vec!["libnope.so.1".into()],
                },
            ),
            (
                PathBuf::from("/host/usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4"),
                ElfDeps {
                    interpreter: None,
                    needed: vec!["libc.so.6".into()],
                },
            ),
            (
                PathBuf::from("/host/usr/lib/x86_64-linux-gnu/libc.so.6"),
                ElfDeps {
                    interpreter: None,
                    needed: vec!["ld-linux-x86-64.so.2".into()],
                },
            ),
        ]);
        (t, deps)
    }

    fn run(roots: &[(&str, &str)]) -> Result<BTreeSet<String>, ElfError> {
        let (tree, deps) = universe();
        let roots: Vec<_> = roots
            .iter()
            .map(|(n, f)| ElfRoot {
                name: n.to_string(),
                file: PathBuf::from(f),
            })
            .collect();
        closure(&roots, &tree, |p| {
            Ok(Some(deps.get(p).cloned().unwrap_or_default()))
        })
    }

    #[test]
    fn closure_follows_needed_interpreter_and_symlink_chains() {
        let got = run(&[("usr/sbin/runc", "/payload/runc")]).unwrap();
        let want: BTreeSet<String> = [
            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
            "usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4",
            "usr/lib64/ld-linux-x86-64.so.2",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want, "libm is not needed and stays out");
    }

    #[test]
    fn static_binaries_need_nothing() {
        assert!(run(&[("usr/bin/node-agent", "/payload/static")])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unresolved_library_names_library_and_binary() {
        let e = run(&[("usr/bin/bad", "/payload/bad")]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("libnope.so.1") && msg.contains("usr/bin/bad"),
            "{msg}"
        );
    }

    #[test]
    fn reads_needs_of_a_real_dynamic_executable() {
        // The test binary itself is a dynamically linked glibc program.
        let me = std::env::current_exe().unwrap();
        let deps = read_deps(&me).unwrap().unwrap();
        assert!(deps.interpreter.unwrap().contains("ld-linux"));
        assert!(
            deps.needed.iter().any(|n| n == "libc.so.6"),
            "{:?}",
            deps.needed
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(read_deps(&script).unwrap(), None);
    }
}
