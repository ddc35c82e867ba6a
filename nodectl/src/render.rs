//! Showing results: `-o table` for people, `-o json` (one object per node
//! per line) for programs. With several nodes, tables share one header and
//! gain a NODE column; other output is prefixed with the node.

use std::io::{self, Write};

use clap::ValueEnum;
use serde_json::{json, Value};

use crate::failure::Failure;
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Columns padded to their widest cell, two spaces apart.
    pub fn lines(&self) -> Vec<String> {
        let all: Vec<&Vec<String>> = std::iter::once(&self.header)
            .chain(self.rows.iter())
            .collect();
        let cols = all.iter().map(|r| r.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                all.iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        all.iter()
            .map(|r| {
                let cells: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        if i + 1 == r.len() {
                            s.clone()
                        } else {
                            format!("{s:<w$}", w = widths[i])
                        }
                    })
                    .collect();
                cells.join("  ").trim_end().to_string()
            })
            .collect()
    }
}

/// How a successful result reads in `-o table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Table(Table),
    Text(String),
}

/// One node's successful answer.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub json: Value,
    pub view: View,
    /// False when the call worked but the answer is bad news (a node that is
    /// not ready): shown, and the exit status says so.
    pub ok: bool,
}

impl Outcome {
    pub fn new(json: Value, view: View) -> Outcome {
        Outcome {
            json,
            view,
            ok: true,
        }
    }
}

pub type Results = Vec<(Target, Result<Outcome, Failure>)>;

/// Print every node's result; true when all succeeded.
pub fn print(format: Format, results: &Results) -> bool {
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    let many = results.len() > 1;
    match format {
        Format::Json => {
            for (t, r) in results {
                let v = match r {
                    Ok(o) => json!({ "node": t.label, "result": o.json }),
                    Err(f) => json!({ "node": t.label, "error": f }),
                };
                let _ = writeln!(out, "{v}");
            }
        }
        Format::Table => {
            let (stdout_lines, stderr_lines) = table_lines(results, many);
            for l in stdout_lines {
                let _ = writeln!(out, "{l}");
            }
            for l in stderr_lines {
                let _ = writeln!(err, "{l}");
            }
        }
    }
    let _ = out.flush();
    results.iter().all(|(_, r)| matches!(r, Ok(o) if o.ok))
}

/// The lines for stdout and for stderr in `-o table`.
pub fn table_lines(results: &Results, many: bool) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    let tables: Vec<(&Target, &Table)> = results
        .iter()
        .filter_map(|(t, r)| match r {
            Ok(Outcome {
                view: View::Table(tab),
                ..
            }) => Some((t, tab)),
            _ => None,
        })
        .collect();
    let one_header = tables.windows(2).all(|w| w[0].1.header == w[1].1.header);
    if many && !tables.is_empty() && one_header {
        let mut merged = Table::new(&["NODE"]);
        merged.header.extend(tables[0].1.header.iter().cloned());
        for (t, tab) in &tables {
            for row in &tab.rows {
                merged.row(
                    std::iter::once(t.label.clone())
                        .chain(row.iter().cloned())
                        .collect(),
                );
            }
        }
        out.extend(merged.lines());
    }
    for (t, r) in results {
        let prefix = if many {
            format!("{}: ", t.label)
        } else {
            String::new()
        };
        match r {
            Ok(Outcome {
                view: View::Table(_),
                ..
            }) if many && one_header => {}
            Ok(Outcome {
                view: View::Table(tab),
                ..
            }) => out.extend(tab.lines().into_iter().map(|l| prefix.clone() + &l)),
            Ok(Outcome {
                view: View::Text(text),
                ..
            }) => out.extend(text.lines().map(|l| prefix.clone() + l)),
            Err(f) => errs.push(format!("{prefix}error: {f}")),
        }
    }
    (out, errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(label: &str) -> Target {
        Target::parse(label).unwrap()
    }

    fn version_table(host: &str) -> Outcome {
        let mut tab = Table::new(&["HOSTNAME", "SLOT"]);
        tab.row(vec![host.into(), "a".into()]);
        Outcome::new(Value::Null, View::Table(tab))
    }

    #[test]
    fn tables_align_columns() {
        let mut tab = Table::new(&["NAME", "STATE"]);
        tab.row(vec!["containerd".into(), "running".into()]);
        assert_eq!(tab.lines(), ["NAME        STATE", "containerd  running"]);
    }

    #[test]
    fn several_nodes_share_one_table_and_errors_name_their_node() {
        let results: Results = vec![
            (t("n1"), Ok(version_table("node-1"))),
            (
                t("n2"),
                Err(Failure::new("connection-refused", "connection refused")),
            ),
            (t("n3"), Ok(version_table("node-3"))),
        ];
        let (out, err) = table_lines(&results, true);
        assert_eq!(
            out,
            [
                "NODE  HOSTNAME  SLOT",
                "n1    node-1    a",
                "n3    node-3    a"
            ]
        );
        assert_eq!(err, ["n2: error: connection refused"]);
    }

    #[test]
    fn one_node_gets_no_prefix_and_text_is_prefixed_per_line_for_many() {
        let text = Outcome::new(Value::Null, View::Text("a\nb".into()));
        let (out, _) = table_lines(&vec![(t("n1"), Ok(text.clone()))], false);
        assert_eq!(out, ["a", "b"]);
        let (out, _) = table_lines(
            &vec![(t("n1"), Ok(text.clone())), (t("n2"), Ok(text))],
            true,
        );
        assert_eq!(out, ["n1: a", "n1: b", "n2: a", "n2: b"]);
    }
}
