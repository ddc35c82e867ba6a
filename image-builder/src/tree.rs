//! A file-system tree planned in memory: what a package contains, what the
//! root image will contain. Paths are relative (`usr/bin/ctr`), normalised,
//! and kept sorted, so everything built from a tree is in a stable order.
//! File contents stay on the host (a staging directory); the tree only points
//! at them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use thiserror::Error;

/// Symlinks followed before a chain is declared a loop (the kernel's limit).
const MAX_SYMLINK_HOPS: usize = 40;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("path {path:?} is not a plain relative path ({reason})")]
    BadPath { path: String, reason: &'static str },
    #[error("{path} is added twice with different contents ({existing} and {new})")]
    Conflict {
        path: String,
        existing: String,
        new: String,
    },
    #[error("{path}: a parent, {parent}, is not a directory")]
    ParentNotDir { path: String, parent: String },
    #[error("{path} does not exist (following symlinks from {start})")]
    Dangling { start: String, path: String },
    #[error("symlink loop resolving {start}")]
    Loop { start: String },
}

/// One entry. Ownership is always root:root; mode holds only permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    /// `source` is where the bytes are on the host; `None` for a file that
    /// was listed (e.g. in a package) but not extracted.
    File {
        mode: u32,
        size: u64,
        source: Option<PathBuf>,
    },
    Symlink {
        target: String,
    },
}

impl Node {
    fn describe(&self) -> String {
        match self {
            Node::Dir { mode } => format!("directory {mode:o}"),
            Node::File { mode, size, source } => match source {
                Some(s) => format!("file {mode:o} {size} bytes from {}", s.display()),
                None => format!("file {mode:o} {size} bytes (not extracted)"),
            },
            Node::Symlink { target } => format!("symlink to {target}"),
        }
    }

    /// Same entry for the image: same kind, mode and target; files need the
    /// same size (their bytes are compared by the caller if it cares).
    fn same_shape(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::Dir { mode: a }, Node::Dir { mode: b }) => a == b,
            (
                Node::File {
                    mode: a, size: sa, ..
                },
                Node::File {
                    mode: b, size: sb, ..
                },
            ) => a == b && sa == sb,
            (Node::Symlink { target: a }, Node::Symlink { target: b }) => a == b,
            _ => false,
        }
    }
}

/// Normalise a path from a tar header or a spec: strip `./` and `/`, collapse
/// `.` and empty components, refuse `..` (nothing may escape the tree).
pub fn normalize(path: &str) -> Result<String, TreeError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(TreeError::BadPath {
                    path: path.to_string(),
                    reason: "contains ..",
                })
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Where a Debian path lands in Caisson's usr-merged root: `/bin`, `/sbin`,
/// `/lib` and `/lib64` live under `/usr`, and the top-level names are
/// symlinks (see `docs/architecture.md`, "Root image").
pub fn usr_merged(path: &str) -> String {
    for top in ["bin", "sbin", "lib", "lib64"] {
        if path == top {
            return format!("usr/{top}");
        }
        if let Some(rest) = path.strip_prefix(top).and_then(|r| r.strip_prefix('/')) {
            return format!("usr/{top}/{rest}");
        }
    }
    path.to_string()
}

/// The top-level symlinks of a usr-merged root.
pub const USR_MERGE_LINKS: [(&str, &str); 4] = [
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

/// Join a symlink's target onto the directory holding the link, resolving
/// `..` lexically. Absolute targets start from the tree's root. `None` if the
/// target climbs above the root.
pub fn join_link(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        parent(link)
            .map(|p| p.split('/').collect())
            .unwrap_or_default()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsTree {
    nodes: BTreeMap<String, Node>,
}

impl FsTree {
    pub fn new() -> FsTree {
        FsTree::default()
    }

    /// Add `node` at `path`, creating missing parent directories (0755).
    /// Adding an identical entry twice is fine; a different one is a conflict.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        let path = normalize(path)?;
        if path.is_empty() {
            return match node {
                Node::Dir { .. } => Ok(()),
                _ => Err(TreeError::BadPath {
                    path,
                    reason: "the root must be a directory",
                }),
            };
        }
        let mut prefix = path.as_str();
        let mut missing = Vec::new();
        while let Some(p) = parent(prefix) {
            match self.nodes.get(p) {
                Some(Node::Dir { .. }) => break,
                Some(_) => {
                    return Err(TreeError::ParentNotDir {
                        path: path.clone(),
                        parent: p.to_string(),
                    })
                }
                None => missing.push(p.to_string()),
            }
            prefix = p;
        }
        for dir in missing {
            self.nodes.insert(dir, Node::Dir { mode: 0o755 });
        }
        match self.nodes.get(&path) {
            Some(existing) if existing.same_shape(&node) => Ok(()),
            // An implied parent directory may be given its real mode later.
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => {
                self.nodes.insert(path, node);
                Ok(())
            }
            Some(existing) => Err(TreeError::Conflict {
                path,
                existing: existing.describe(),
                new: node.describe(),
            }),
            None => {
                self.nodes.insert(path, node);
                Ok(())
            }
        }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Entries in sorted path order; a parent always precedes its children.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// Entries under `dir/` (not `dir` itself).
    pub fn iter_under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        let prefix = format!("{dir}/");
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, n)| (p.as_str(), n))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Total bytes of regular files.
    pub fn file_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    /// Follow `path` through symlinks to a non-symlink entry. Returns every
    /// path visited, the final one last. `map` rewrites each path before
    /// lookup (the builder passes `usr_merged` so Debian's `/lib/...` targets
    /// resolve in a usr-merged tree).
    pub fn resolve_chain(
        &self,
        path: &str,
        map: impl Fn(&str) -> String,
    ) -> Result<Vec<String>, TreeError> {
        let start = path.to_string();
        let mut current = map(&join_link("", path).ok_or_else(|| TreeError::Dangling {
            start: start.clone(),
            path: start.clone(),
        })?);
        let mut chain = Vec::new();
        for _ in 0..MAX_SYMLINK_HOPS {
            let node = self
                .nodes
                .get(&current)
                .ok_or_else(|| TreeError::Dangling {
                    start: start.clone(),
                    path: current.clone(),
                })?;
            chain.push(current.clone());
            match node {
                Node::Symlink { target } => {
                    let next = join_link(&current, target).ok_or_else(|| TreeError::Dangling {
                        start: start.clone(),
                        path: target.clone(),
                    })?;
                    current = map(&next);
                }
                _ => return Ok(chain),
            }
        }
        Err(TreeError::Loop { start })
    }

    /// Check that every symlink resolves inside the tree, following
    /// directory symlinks too (as the kernel would at run time).
    pub fn check_symlinks(&self) -> Result<(), TreeError> {
        for (path, node) in &self.nodes {
            if let Node::Symlink { .. } = node {
                self.lookup_following(path)?;
            }
        }
        Ok(())
    }

    /// Resolve `path` component by component, following symlinks anywhere.
    fn lookup_following(&self, path: &str) -> Result<String, TreeError> {
        let start = path.to_string();
        let mut pending: Vec<String> = path.split('/').rev().map(String::from).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(part);
            let here = resolved.join("/");
            match self.nodes.get(&here) {
                None => return Err(TreeError::Dangling { start, path: here }),
                Some(Node::Symlink { target }) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(TreeError::Loop { start });
                    }
                    resolved.pop();
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    pending.extend(target.split('/').rev().map(String::from));
                }
                Some(_) => {}
            }
        }
        Ok(resolved.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Node {
        Node::File {
            mode: 0o644,
            size,
            source: None,
        }
    }

    #[test]
    fn paths_are_normalised_and_may_not_escape() {
        assert_eq!(normalize("./usr//bin/./ctr").unwrap(), "usr/bin/ctr");
        assert_eq!(normalize("/lib64/").unwrap(), "lib64");
        assert!(normalize("usr/../../etc").is_err());
    }

    #[test]
    fn debian_paths_map_into_the_usr_merged_root() {
        assert_eq!(
            usr_merged("lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            usr_merged("lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(usr_merged("sbin"), "usr/sbin");
        assert_eq!(usr_merged("usr/lib/x.so"), "usr/lib/x.so");
        assert_eq!(usr_merged("library/x"), "library/x");
    }

    #[test]
    fn insert_creates_parents_and_rejects_conflicts() {
        let mut t = FsTree::new();
        t.insert("usr/bin/ctr", file(3)).unwrap();
        assert_eq!(t.get("usr"), Some(&Node::Dir { mode: 0o755 }));
        t.insert("usr/bin/ctr", file(3)).unwrap();
        let e = t.insert("usr/bin/ctr", file(4)).unwrap_err();
        assert!(matches!(e, TreeError::Conflict { .. }), "{e}");
        let e = t.insert("usr/bin/ctr/x", file(1)).unwrap_err();
        assert!(matches!(e, TreeError::ParentNotDir { .. }), "{e}");
        let order: Vec<_> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(order, ["usr", "usr/bin", "usr/bin/ctr"]);
    }

    #[test]
    fn chains_resolve_through_relative_and_absolute_links() {
        let mut t = FsTree::new();
        t.insert("usr/lib/x86_64-linux-gnu/ld.so.2", file(9))
            .unwrap();
        t.insert(
            "usr/lib64/ld.so.2",
            Node::Symlink {
                target: "/lib/x86_64-linux-gnu/ld.so.2".into(),
            },
        )
        .unwrap();
        t.insert(
            "usr/bin/runc",
            Node::Symlink {
                target: "../sbin/runc".into(),
            },
        )
        .unwrap();
        let chain = t.resolve_chain("lib64/ld.so.2", usr_merged).unwrap();
        assert_eq!(
            chain,
            ["usr/lib64/ld.so.2", "usr/lib/x86_64-linux-gnu/ld.so.2"]
        );
        let e = t.resolve_chain("usr/bin/runc", usr_merged).unwrap_err();
        assert_eq!(
            e,
            TreeError::Dangling {
                start: "usr/bin/runc".into(),
                path: "usr/sbin/runc".into()
            }
        );
        t.insert("a", Node::Symlink { target: "b".into() }).unwrap();
        t.insert("b", Node::Symlink { target: "a".into() }).unwrap();
        assert!(matches!(
            t.resolve_chain("a", |p| p.to_string()),
            Err(TreeError::Loop { .. })
        ));
    }

    #[test]
    fn symlink_check_follows_directory_links() {
        let mut t = FsTree::new();
        for (link, target) in USR_MERGE_LINKS {
            t.insert(target, Node::Dir { mode: 0o755 }).unwrap();
            t.insert(
                link,
                Node::Symlink {
                    target: target.into(),
                },
            )
            .unwrap();
        }
        t.insert("usr/lib/x86_64-linux-gnu/ld.so.2", file(9))
            .unwrap();
        t.insert(
            "usr/lib64/ld.so.2",
            Node::Symlink {
                target: "/lib/x86_64-linux-gnu/ld.so.2".into(),
            },
        )
        .unwrap();
        t.check_symlinks().unwrap();
        t.insert(
            "usr/lib64/gone",
            Node::Symlink {
                target: "../lib/nothing".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            t.check_symlinks(),
            Err(TreeError::Dangling { .. })
        ));
    }
}
