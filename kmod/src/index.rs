//! The module index: what `depmod` computes and `modprobe` reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::order::{closure, topological, DepGraph};
use crate::{fnmatch, modinfo_from_file, name_from_path, normalize, KmodError};

pub const MODULES_DEP: &str = "modules.dep";
pub const MODULES_ALIAS: &str = "modules.alias";
pub const MODULES_BUILTIN: &str = "modules.builtin";

/// Loadable modules (name → path relative to `lib/modules/<kver>`, and
/// dependencies), their alias globs, and the modules built into the kernel.
/// Every collection is sorted, so rendering is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleIndex {
    paths: BTreeMap<String, String>,
    /// Direct dependencies when generated, transitive when parsed; the two
    /// give the same closures and orders (see `order`).
    deps: DepGraph,
    /// (module, pattern), sorted and unique.
    aliases: BTreeSet<(String, String)>,
    /// name → path as listed in modules.builtin.
    builtins: BTreeMap<String, String>,
}

impl ModuleIndex {
    /// Our depmod: read the `.modinfo` of every `*.ko` under `modules_dir`
    /// (symlinks such as `build` and `source` are not followed) and
    /// `modules.builtin` if present. Fails on duplicate module names,
    /// dependencies on missing modules and dependency cycles, as a broken
    /// index would otherwise only show up at boot.
    pub fn generate(modules_dir: &Path) -> Result<ModuleIndex, KmodError> {
        let mut files = Vec::new();
        collect_ko_files(modules_dir, "", &mut files)?;
        files.sort();
        let mut index = ModuleIndex::default();
        for rel in files {
            let info = modinfo_from_file(&modules_dir.join(&rel))?;
            index.insert_module(&info.name, &rel)?;
            index
                .deps
                .insert(info.name.clone(), info.depends.into_iter().collect());
            index
                .aliases
                .extend(info.aliases.into_iter().map(|a| (info.name.clone(), a)));
        }
        index.builtins = parse_builtin(&read_optional(&modules_dir.join(MODULES_BUILTIN))?);
        index.validate()?;
        Ok(index)
    }

    /// Read `modules.dep` (required), `modules.alias` and `modules.builtin`
    /// (optional: the initramfs carries only `modules.dep`).
    pub fn load(modules_dir: &Path) -> Result<ModuleIndex, KmodError> {
        let dep_path = modules_dir.join(MODULES_DEP);
        let dep = std::fs::read_to_string(&dep_path).map_err(|e| KmodError::io(dep_path, e))?;
        let alias = read_optional(&modules_dir.join(MODULES_ALIAS))?;
        let builtin = read_optional(&modules_dir.join(MODULES_BUILTIN))?;
        ModuleIndex::parse(&dep, &alias, &builtin)
    }

    /// Parse the text of the three index files.
    pub fn parse(dep: &str, alias: &str, builtin: &str) -> Result<ModuleIndex, KmodError> {
        let mut index = ModuleIndex::default();
        for (n, line) in content_lines(dep) {
            let (path, deps) = line.split_once(':').ok_or_else(|| KmodError::Parse {
                file: MODULES_DEP,
                line: n,
                reason: format!("expected \"<path>: <deps>\", got {line:?}"),
            })?;
            let name = name_from_path(path.trim());
            index.insert_module(&name, path.trim())?;
            index
                .deps
                .insert(name, deps.split_whitespace().map(name_from_path).collect());
        }
        for (n, line) in content_lines(alias) {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module), None) => {
                    index
                        .aliases
                        .insert((normalize(module), pattern.to_string()));
                }
                _ => {
                    return Err(KmodError::Parse {
                        file: MODULES_ALIAS,
                        line: n,
                        reason: format!("expected \"alias <pattern> <module>\", got {line:?}"),
                    })
                }
            }
        }
        index.builtins = parse_builtin(builtin);
        index.validate()?;
        Ok(index)
    }

    fn insert_module(&mut self, name: &str, path: &str) -> Result<(), KmodError> {
        if let Some(first) = self.paths.get(name) {
            return Err(KmodError::DuplicateModule {
                name: name.to_string(),
                first: first.clone(),
                second: path.to_string(),
            });
        }
        self.paths.insert(name.to_string(), path.to_string());
        Ok(())
    }

    /// Every dependency exists and there is no cycle. A dependency that is
    /// built in is dropped: it is always "loaded".
    fn validate(&mut self) -> Result<(), KmodError> {
        let builtins = &self.builtins;
        for deps in self.deps.values_mut() {
            deps.retain(|d| !builtins.contains_key(d));
        }
        let all: Vec<String> = self.paths.keys().cloned().collect();
        topological(&self.deps, &closure(&self.deps, &all)?)?;
        Ok(())
    }

    /// `modules.dep`: one line per module, sorted by path, `path: deps…`.
    /// Deps are the full transitive closure in *reverse* load order, as
    /// depmod writes them: loading from the end of the list to the start,
    /// then the module itself, satisfies every dependency.
    pub fn render_dep(&self) -> String {
        let mut by_path: Vec<(&String, &String)> = self.paths.iter().map(|(n, p)| (p, n)).collect();
        by_path.sort();
        let mut out = String::new();
        for (path, name) in by_path {
            out.push_str(path);
            out.push(':');
            for dep in self.dependencies_in_load_order(name).iter().rev() {
                if let Some(dep_path) = self.paths.get(dep) {
                    out.push(' ');
                    out.push_str(dep_path);
                }
            }
            out.push('\n');
        }
        out
    }

    /// Everything `name` needs, dependencies first, without `name` itself.
    /// Indices are validated on construction; should a cycle slip through,
    /// the closure is still listed (sorted) rather than dropped.
    fn dependencies_in_load_order(&self, name: &str) -> Vec<String> {
        let deps: Vec<String> = self
            .deps
            .get(name)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        let set = closure(&self.deps, &deps).unwrap_or_default();
        let set: BTreeSet<String> = set.into_iter().filter(|d| d != name).collect();
        topological(&self.deps, &set).unwrap_or_else(|_| set.into_iter().collect())
    }

    /// `modules.alias`: `alias <pattern> <module>`, sorted by module then
    /// pattern (depmod uses modules.order; any stable order serves).
    pub fn render_alias(&self) -> String {
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for (module, pattern) in &self.aliases {
            let _ = writeln!(out, "alias {pattern} {module}");
        }
        out
    }

    /// `modules.builtin`: one path per line, sorted.
    pub fn render_builtin(&self) -> String {
        let mut paths: Vec<&String> = self.builtins.values().collect();
        paths.sort();
        paths.into_iter().map(|p| format!("{p}\n")).collect()
    }

    /// Write the three index files into `modules_dir`, each through a
    /// temporary name and a rename so a reader never sees half a file.
    pub fn write_to(&self, modules_dir: &Path) -> std::io::Result<()> {
        for (file, text) in [
            (MODULES_DEP, self.render_dep()),
            (MODULES_ALIAS, self.render_alias()),
            (MODULES_BUILTIN, self.render_builtin()),
        ] {
            let tmp = modules_dir.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, modules_dir.join(file))?;
        }
        Ok(())
    }

    /// Path relative to `lib/modules/<kver>` of a loadable module.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.paths.get(&normalize(name)).map(String::as_str)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtins.contains_key(&normalize(name))
    }

    /// A loadable module or a builtin one.
    pub fn contains(&self, name: &str) -> bool {
        let name = normalize(name);
        self.paths.contains_key(&name) || self.builtins.contains_key(&name)
    }

    /// Loadable module names, sorted.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.paths.keys().map(String::as_str)
    }

    /// Builtin module names, sorted.
    pub fn builtins(&self) -> impl Iterator<Item = &str> {
        self.builtins.keys().map(String::as_str)
    }

    /// Alias globs of one module, sorted.
    pub fn aliases_of(&self, name: &str) -> Vec<&str> {
        let name = normalize(name);
        self.aliases
            .iter()
            .filter(|(m, _)| *m == name)
            .map(|(_, p)| p.as_str())
            .collect()
    }

    /// `names` and their dependencies as module names, dependencies first,
    /// each once. Builtins are skipped; anything else unknown is an error.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>, KmodError> {
        let roots = self.loadable_roots(names)?;
        topological(&self.deps, &closure(&self.deps, &roots)?)
    }

    fn loadable_roots(&self, names: &[&str]) -> Result<Vec<String>, KmodError> {
        let mut roots = Vec::new();
        for name in names {
            let name = normalize(name);
            if self.paths.contains_key(&name) {
                roots.push(name);
            } else if !self.builtins.contains_key(&name) {
                return Err(KmodError::UnknownModule { name });
            }
        }
        Ok(roots)
    }

    /// The index restricted to `names` and their dependencies (with their
    /// aliases). Builtins are all kept: the list is small and lets the
    /// pruned index still answer `is_builtin`.
    pub fn prune(&self, names: &[&str]) -> Result<ModuleIndex, KmodError> {
        let keep = closure(&self.deps, &self.loadable_roots(names)?)?;
        Ok(ModuleIndex {
            paths: self
                .paths
                .iter()
                .filter(|(n, _)| keep.contains(*n))
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect(),
            deps: self
                .deps
                .iter()
                .filter(|(n, _)| keep.contains(*n))
                .map(|(n, d)| (n.clone(), d.clone()))
                .collect(),
            aliases: self
                .aliases
                .iter()
                .filter(|(m, _)| keep.contains(m))
                .cloned()
                .collect(),
            builtins: self.builtins.clone(),
        })
    }

    /// Modules with an alias glob matching a device's `modalias`, sorted
    /// by name, each once.
    pub fn match_modalias(&self, modalias: &str) -> Vec<String> {
        let mut found = BTreeSet::new();
        for (module, pattern) in &self.aliases {
            // Cheap rejection on the literal prefix before the first
            // wildcard: almost every alias fails here.
            let literal = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
            let prefix_ok = pattern
                .get(..literal)
                .is_some_and(|p| modalias.starts_with(p));
            if prefix_ok && fnmatch(pattern, modalias) {
                found.insert(module.clone());
            }
        }
        found.into_iter().collect()
    }
}

/// (1-based line number, trimmed line) for non-empty, non-comment lines.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn parse_builtin(text: &str) -> BTreeMap<String, String> {
    content_lines(text)
        .map(|(_, p)| (name_from_path(p), p.to_string()))
        .collect()
}

fn read_optional(path: &Path) -> Result<String, KmodError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(KmodError::io(path, e)),
    }
}

/// Relative paths of `*.ko` files under `dir`, not following symlinks.
fn collect_ko_files(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), KmodError> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| KmodError::io(&dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| KmodError::io(&dir, e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| KmodError::io(entry.path(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if file_type.is_dir() {
            collect_ko_files(root, &child, out)?;
        } else if file_type.is_file() && name.ends_with(".ko") {
            out.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
