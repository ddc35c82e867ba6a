//! The dependency graph between services, checked before anything starts:
//! names, unknown dependencies and cycles. Pure.

use std::collections::{BTreeMap, BTreeSet};

use super::{ServiceSpec, SupervisorError};

/// Log sources the API serves besides services.
const RESERVED: [&str; 2] = ["agent", "kernel"];

/// A name must be a usable file name, cgroup and log source.
fn check_name(name: &str) -> Result<(), SupervisorError> {
    let why = if name.is_empty() || name.len() > 64 {
        Some("it must be 1 to 64 characters long")
    } else if RESERVED.contains(&name) {
        Some("it is a log source of the agent")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some("it must start with a lowercase letter or a digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        Some("only lowercase letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match why {
        Some(why) => Err(SupervisorError::InvalidName {
            name: name.to_string(),
            why: why.to_string(),
        }),
        None => Ok(()),
    }
}

/// Check names, duplicates, dependencies and cycles. Returns, for each
/// spec, the indices of its dependencies.
pub(super) fn validate(specs: &[ServiceSpec]) -> Result<Vec<Vec<usize>>, SupervisorError> {
    let mut index = BTreeMap::new();
    for (i, spec) in specs.iter().enumerate() {
        check_name(&spec.name)?;
        if index.insert(spec.name.as_str(), i).is_some() {
            return Err(SupervisorError::Duplicate(spec.name.clone()));
        }
    }
    let mut deps = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut mine = Vec::new();
        for dep in &spec.deps {
            match index.get(dep.as_str()) {
                Some(&i) => mine.push(i),
                None => {
                    return Err(SupervisorError::UnknownDependency {
                        service: spec.name.clone(),
                        dep: dep.clone(),
                    })
                }
            }
        }
        deps.push(mine);
    }
    if let Some(cycle) = find_cycle(&deps) {
        let names = cycle
            .iter()
            .filter_map(|&i| specs.get(i).map(|s| s.name.clone()))
            .collect();
        return Err(SupervisorError::Cycle(names));
    }
    Ok(deps)
}

/// A cycle as the services along it, the first repeated at the end.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        at: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        if let Some(m) = marks.get_mut(at) {
            *m = Mark::OnPath;
        }
        path.push(at);
        for &next in deps.get(at).map(Vec::as_slice).unwrap_or_default() {
            match marks.get(next).copied() {
                Some(Mark::OnPath) => {
                    let start = path.iter().position(|&p| p == next).unwrap_or(0);
                    let mut cycle: Vec<usize> = path.get(start..).unwrap_or_default().to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Some(Mark::New) => {
                    if let Some(cycle) = visit(next, deps, marks, path) {
                        return Some(cycle);
                    }
                }
                Some(Mark::Done) | None => {}
            }
        }
        path.pop();
        if let Some(m) = marks.get_mut(at) {
            *m = Mark::Done;
        }
        None
    }
    let mut marks = vec![Mark::New; deps.len()];
    let mut path = Vec::new();
    (0..deps.len()).find_map(|start| {
        if marks.get(start) == Some(&Mark::New) {
            visit(start, deps, &mut marks, &mut path)
        } else {
            None
        }
    })
}

/// The order to stop in: layers of services, each stopped together once
/// every service depending on it is down. Dependants come first. `deps` must
/// be acyclic (as [`validate`] returns it).
pub(super) fn stop_layers(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = deps.len();
    // depth[i]: the longest chain of dependants above i.
    let mut depth = vec![0usize; n];
    // Relax n times: enough for any chain in an acyclic graph.
    for _ in 0..n {
        let mut changed = false;
        for (dependant, mine) in deps.iter().enumerate() {
            let above = depth.get(dependant).copied().unwrap_or(0) + 1;
            for &dep in mine {
                if let Some(d) = depth.get_mut(dep) {
                    if *d < above {
                        *d = above;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut layers: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (i, d) in depth.into_iter().enumerate() {
        layers.entry(d).or_default().insert(i);
    }
    layers
        .into_values()
        .map(|set| set.into_iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        ServiceSpec {
            deps: deps.iter().map(|d| d.to_string()).collect(),
            ..ServiceSpec::new(name, "/bin/true")
        }
    }

    #[test]
    fn dependencies_are_resolved_to_indices() {
        let specs = [spec("containerd", &[]), spec("k3s", &["containerd"])];
        assert_eq!(validate(&specs).unwrap(), vec![vec![], vec![0]]);
    }

    #[test]
    fn an_unknown_dependency_names_both_services() {
        let err = validate(&[spec("k3s", &["containrd"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service \"k3s\" depends on \"containrd\", which is not defined"
        );
    }

    #[test]
    fn a_cycle_is_rejected_and_named() {
        let specs = [
            spec("a", &[]),
            spec("b", &["a", "d"]),
            spec("c", &["b"]),
            spec("d", &["c"]),
        ];
        let err = validate(&specs).unwrap_err();
        assert!(
            matches!(&err, SupervisorError::Cycle(names) if names == &["b", "d", "c", "b"]),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "services depend on each other in a cycle: b → d → c → b"
        );
        let selfish = validate(&[spec("a", &["a"])]).unwrap_err();
        assert_eq!(
            selfish.to_string(),
            "services depend on each other in a cycle: a → a"
        );
    }

    #[test]
    fn names_must_be_unique_and_usable() {
        assert!(matches!(
            validate(&[spec("a", &[]), spec("a", &[])]),
            Err(SupervisorError::Duplicate(n)) if n == "a"
        ));
        for bad in ["", "agent", "kernel", "../etc", "K3s", "-x", "a b"] {
            assert!(
                matches!(
                    validate(&[spec(bad, &[])]),
                    Err(SupervisorError::InvalidName { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        validate(&[spec("containerd", &[]), spec("k3s-agent_1.x", &[])]).unwrap();
    }

    #[test]
    fn dependants_stop_first_and_independent_services_together() {
        // 0 ← 1 ← 2, 0 ← 3, 4 alone.
        let deps = vec![vec![], vec![0], vec![1], vec![0], vec![]];
        assert_eq!(stop_layers(&deps), vec![vec![2, 3, 4], vec![1], vec![0]]);
        // A diamond: 3 needs 1 and 2, both need 0.
        let diamond = vec![vec![], vec![0], vec![0], vec![1, 2]];
        assert_eq!(stop_layers(&diamond), vec![vec![3], vec![1, 2], vec![0]]);
        assert!(stop_layers(&[]).is_empty());
    }
}
