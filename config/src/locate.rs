//! Map a key path such as `network.interfaces[1].mtu` back to a line and
//! column in the original text, for errors found after deserialization.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a."b.c"[1].d` → keys and indices; a quoted key may contain dots.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(Step::Key(&quoted[..end]));
            rest = quoted.get(end + 1..).unwrap_or("");
        } else if let Some(index) = rest.strip_prefix('[') {
            let end = index.find(']').unwrap_or(index.len());
            if let Ok(n) = index[..end].parse() {
                out.push(Step::Index(n));
            }
            rest = index.get(end + 1..).unwrap_or("");
        } else if let Some(after_dot) = rest.strip_prefix('.') {
            rest = after_dot;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            out.push(Step::Key(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out
}

/// A node of the parsed document, whatever its TOML spelling.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Table(t) => t.span(),
            Node::Value(v) => v.span(),
        }
    }

    fn child(self, step: &Step<'_>) -> Option<Node<'a>> {
        match (self, step) {
            (Node::Item(Item::Table(t)), Step::Key(k)) | (Node::Table(t), Step::Key(k)) => {
                t.get(k).map(Node::Item)
            }
            (Node::Item(Item::Value(v)), _) => Node::Value(v).child(step),
            (Node::Value(Value::InlineTable(t)), Step::Key(k)) => t.get(k).map(Node::Value),
            (Node::Item(Item::ArrayOfTables(a)), Step::Index(i)) => a.get(*i).map(Node::Table),
            (Node::Value(Value::Array(a)), Step::Index(i)) => a.get(*i).map(Node::Value),
            _ => None,
        }
    }
}

/// Where the deepest existing element of `path` starts; `None` if the text
/// does not parse or no element of the path has a position.
pub fn position_of_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut best = None;
    for step in steps(path) {
        match node.child(&step) {
            Some(next) => {
                if let Some(span) = next.span() {
                    best = Some(span.start);
                }
                node = next;
            }
            None => break,
        }
    }
    best.map(|o| line_col(text, o))
}

/// The key path that the text at 1-based `line` belongs to, read from the
/// lines alone: for syntax errors, where no parse tree exists. Tracks
/// `[table]` and `[[array]]` headers (with their index) and the key before
/// `=` on the line itself.
pub fn path_at_line(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        let header = if let Some(name) = l
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let n = counts.entry(name.to_string()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
            true
        } else if let Some(name) = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            table = name.to_string();
            true
        } else {
            false
        };
        if i + 1 == line {
            let key = if header {
                ""
            } else {
                l.split_once('=')
                    .map(|(k, _)| k.trim().trim_matches('"'))
                    .unwrap_or("")
            };
            return match (table.is_empty(), key.is_empty()) {
                (true, _) => key.to_string(),
                (false, true) => table,
                (false, false) => format!("{table}.{key}"),
            };
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = 1\n\n[[network.interfaces]]\nname = \"eth0\"\n\n[[network.interfaces]]\nname = \"eth1\"\nmtu = 10\naddresses = [\"10.0.0.1/24\", \"bad\"]\n";

    #[test]
    fn splits_paths_into_keys_and_indices() {
        assert_eq!(
            steps("network.interfaces[1].addresses[0]"),
            vec![
                Step::Key("network"),
                Step::Key("interfaces"),
                Step::Index(1),
                Step::Key("addresses"),
                Step::Index(0)
            ]
        );
        assert_eq!(
            steps("kubernetes.node_labels.\"topology.kubernetes.io/zone\""),
            vec![
                Step::Key("kubernetes"),
                Step::Key("node_labels"),
                Step::Key("topology.kubernetes.io/zone")
            ]
        );
        assert_eq!(
            steps("containerd.registries.\"r.example:5000\".endpoints[1]"),
            vec![
                Step::Key("containerd"),
                Step::Key("registries"),
                Step::Key("r.example:5000"),
                Step::Key("endpoints"),
                Step::Index(1)
            ]
        );
    }

    #[test]
    fn finds_values_inside_arrays_of_tables() {
        assert_eq!(
            position_of_path(DOC, "network.interfaces[1].mtu"),
            Some((8, 7))
        );
        assert_eq!(
            position_of_path(DOC, "network.interfaces[1].addresses[1]"),
            Some((9, 29))
        );
        assert_eq!(position_of_path(DOC, "version"), Some((1, 11)));
    }

    #[test]
    fn path_at_line_follows_headers_and_array_indices() {
        assert_eq!(path_at_line(DOC, 1), "version");
        assert_eq!(path_at_line(DOC, 8), "network.interfaces[1].mtu");
        assert_eq!(path_at_line(DOC, 6), "network.interfaces[1]");
        assert_eq!(path_at_line(DOC, 4), "network.interfaces[0].name");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
