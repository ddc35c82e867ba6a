//! Dependency closure and load order.
//!
//! The order is a topological sort (Kahn's algorithm) that always emits the
//! alphabetically smallest module whose dependencies are all loaded. Unlike
//! a depth-first walk, this order depends only on the transitive "needs"
//! relation, so an index generated from direct `depends=` and one parsed
//! back from `modules.dep` (which lists transitive dependencies) give the
//! same order, and `render_dep` round-trips byte for byte.

use std::collections::{BTreeMap, BTreeSet};

use crate::KmodError;

/// Dependencies of each loadable module, by normalized name.
pub(crate) type DepGraph = BTreeMap<String, BTreeSet<String>>;

/// `roots` and everything they need, transitively. Unknown roots and
/// dependencies are errors; the walk visits each module once, so cycles
/// cannot make it loop.
pub(crate) fn closure(graph: &DepGraph, roots: &[String]) -> Result<BTreeSet<String>, KmodError> {
    let mut seen = BTreeSet::new();
    // (the module that needs it, for the error message; the module)
    let mut stack: Vec<(Option<String>, String)> =
        roots.iter().rev().map(|r| (None, r.clone())).collect();
    while let Some((parent, name)) = stack.pop() {
        if seen.contains(&name) {
            continue;
        }
        let Some(deps) = graph.get(&name) else {
            return Err(match parent {
                None => KmodError::UnknownModule { name },
                Some(module) => KmodError::UnknownDependency {
                    module,
                    dependency: name,
                },
            });
        };
        seen.insert(name.clone());
        for dep in deps.iter().rev() {
            if !seen.contains(dep) {
                stack.push((Some(name.clone()), dep.clone()));
            }
        }
    }
    Ok(seen)
}

/// Order `set` (which must be closed under dependencies) so that every
/// module comes after all of its dependencies.
pub(crate) fn topological(
    graph: &DepGraph,
    set: &BTreeSet<String>,
) -> Result<Vec<String>, KmodError> {
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in set {
        let deps = graph
            .get(name)
            .map(|d| d.iter().filter(|d| set.contains(*d)).collect::<Vec<_>>());
        let deps = deps.unwrap_or_default();
        waiting.insert(name, deps.len());
        for dep in deps {
            dependents.entry(dep.as_str()).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(&k, _)| k)
        .collect();
    let mut order = Vec::with_capacity(set.len());
    while let Some(next) = ready.pop_first() {
        order.push(next.to_string());
        for &dependent in dependents.get(next).map(Vec::as_slice).unwrap_or_default() {
            if let Some(n) = waiting.get_mut(dependent) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    ready.insert(dependent);
                }
            }
        }
    }
    if order.len() < set.len() {
        let done: BTreeSet<&str> = order.iter().map(String::as_str).collect();
        let modules = set
            .iter()
            .filter(|m| !done.contains(m.as_str()))
            .cloned()
            .collect();
        return Err(KmodError::DependencyCycle { modules });
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> DepGraph {
        edges
            .iter()
            .map(|(m, deps)| (m.to_string(), deps.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    fn order(g: &DepGraph, roots: &[&str]) -> Result<Vec<String>, KmodError> {
        let roots: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        topological(g, &closure(g, &roots)?)
    }

    #[test]
    fn diamond_loads_the_shared_dependency_once_and_first() {
        // top -> left, right; left, right -> base
        let g = graph(&[
            ("top", &["left", "right"]),
            ("left", &["base"]),
            ("right", &["base"]),
            ("base", &[]),
        ]);
        assert_eq!(
            order(&g, &["top"]).unwrap(),
            ["base", "left", "right", "top"]
        );
    }

    #[test]
    fn order_depends_only_on_the_transitive_relation() {
        // Direct edges and their transitive closure give the same order.
        let direct = graph(&[("a", &["b", "c"]), ("c", &["a2"]), ("b", &[]), ("a2", &[])]);
        let transitive = graph(&[
            ("a", &["a2", "b", "c"]),
            ("c", &["a2"]),
            ("b", &[]),
            ("a2", &[]),
        ]);
        assert_eq!(
            order(&direct, &["a"]).unwrap(),
            order(&transitive, &["a"]).unwrap()
        );
        assert_eq!(order(&direct, &["a"]).unwrap(), ["a2", "b", "c", "a"]);
    }

    #[test]
    fn cycle_is_reported_with_its_members_instead_of_looping() {
        let g = graph(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &[]),
            ("e", &["a"]),
        ]);
        match order(&g, &["e", "d"]) {
            Err(KmodError::DependencyCycle { modules }) => {
                assert_eq!(modules, ["a", "b", "c", "e"])
            }
            other => panic!("expected a cycle error, got {other:?}"),
        }
        let self_loop = graph(&[("x", &["x"])]);
        assert!(matches!(
            order(&self_loop, &["x"]),
            Err(KmodError::DependencyCycle { .. })
        ));
    }

    #[test]
    fn unknown_root_and_unknown_dependency_are_named() {
        let g = graph(&[("a", &["ghost"])]);
        match order(&g, &["nope"]) {
            Err(KmodError::UnknownModule { name }) => assert_eq!(name, "nope"),
            other => panic!("{other:?}"),
        }
        match order(&g, &["a"]) {
            Err(KmodError::UnknownDependency { module, dependency }) => {
                assert_eq!((module.as_str(), dependency.as_str()), ("a", "ghost"))
            }
            other => panic!("{other:?}"),
        }
    }
}
