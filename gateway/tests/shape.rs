//! The shape docs/ARCHITECTURE.md promises for `gateway/src`, checked on the source itself:
//! no file over 800 lines, no function in `pipeline/` or `products/` over 100 lines, and no
//! import cycle between the crate's top-level modules (a module's files count as one node).
//! Comments are ignored; `main.rs` and `lib.rs` (the roots) are not nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FILE_LINES_MAX: usize = 800;
const FN_LINES_MAX: usize = 100;

struct Source {
    /// Path under `gateway/src`, with `/` separators.
    path: String,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    collect(&root, &root, &mut found);
    assert!(
        found.len() > 20,
        "expected the gateway's sources under {}, found {}",
        root.display(),
        found.len()
    );
    found
}

fn collect(root: &Path, dir: &Path, found: &mut Vec<Source>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(root, &path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under root");
            found.push(Source {
                path: relative.to_string_lossy().replace('\\', "/"),
                text: std::fs::read_to_string(&path).expect("read source"),
            });
        }
    }
}

/// A line with its `//` comment removed (strings holding `//` are rare enough in this code
/// that a cut inside one only shortens what is scanned).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|s| s.text.lines().count() > FILE_LINES_MAX)
        .map(|s| format!("{} ({} lines)", s.path, s.text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "files over {FILE_LINES_MAX} lines: {long:?}"
    );
}

/// Every `fn` item in the text with its length in lines: from the `fn` line to the closing
/// brace at the same indentation (rustfmt's layout), or the line itself for a one-liner or a
/// declaration.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let code = code_of(line);
        let trimmed = code.trim_start();
        let indent = &code[..code.len() - trimmed.len()];
        let Some(name) = fn_name(trimmed) else {
            continue;
        };
        let closing = format!("{indent}}}");
        let end = if trimmed.trim_end().ends_with('}') || trimmed.trim_end().ends_with(';') {
            at
        } else {
            (at..lines.len())
                .find(|&j| code_of(lines[j]).trim_end() == closing)
                .unwrap_or(at)
        };
        found.push((name, end - at + 1));
    }
    found
}

fn fn_name(trimmed: &str) -> Option<String> {
    let mut rest = trimmed;
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("async ").unwrap_or(rest);
    let rest = rest.strip_prefix("fn ")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[test]
fn the_function_finder_measures_what_rustfmt_lays_out() {
    let text = "fn one() {}\n\
                pub async fn two(\n    a: u8,\n) -> u8 {\n    a\n}\n\
                // fn not_code() {\n\
                impl X {\n    pub(crate) fn three(&self) {\n        let _ = 1;\n    }\n}\n";
    assert_eq!(
        functions(text),
        vec![("one".into(), 1), ("two".into(), 5), ("three".into(), 3)]
    );
}

#[test]
fn no_function_in_pipeline_or_products_is_over_100_lines() {
    let mut long = Vec::new();
    let mut counted = 0;
    for source in sources() {
        if !(source.path.starts_with("pipeline/") || source.path.starts_with("products/")) {
            continue;
        }
        for (name, lines) in functions(&source.text) {
            counted += 1;
            if lines > FN_LINES_MAX {
                long.push(format!("{}::{name} ({lines} lines)", source.path));
            }
        }
    }
    assert!(counted > 50, "found only {counted} functions to measure");
    assert!(
        long.is_empty(),
        "functions over {FN_LINES_MAX} lines: {long:?}"
    );
}

/// The top-level module a file belongs to (`pipeline/verify.rs` -> `pipeline`).
fn module_of(path: &str) -> String {
    let first = path.split('/').next().unwrap_or(path);
    first.trim_end_matches(".rs").to_owned()
}

/// The crate modules a text names: `crate::x` paths and `use crate::{x, y::z}` groups.
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text.lines().map(code_of).collect::<Vec<_>>().join("\n");
    let mut named = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    named.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

/// A cycle in the graph, if there is one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            g.entry((*from).into()).or_default().insert((*to).into());
        }
        g
    };
    assert_eq!(cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let found = cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).expect("a cycle");
    assert_eq!(found.first(), found.last());
    assert_eq!(found.len(), 4);
    assert_eq!(
        imports("use crate::{a, b::C};\nlet x = crate::c::f(); // crate::d"),
        ["a", "b", "c"].into_iter().map(String::from).collect()
    );
}

#[test]
fn modules_of_the_gateway_import_each_other_without_cycles() {
    let sources = sources();
    let modules: BTreeSet<String> = sources
        .iter()
        .map(|s| module_of(&s.path))
        .filter(|m| m != "main" && m != "lib")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &sources {
        let from = module_of(&source.path);
        if !modules.contains(&from) {
            continue;
        }
        let edges = graph.entry(from.clone()).or_default();
        for to in imports(&source.text) {
            if to != from && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(edges > 20, "found only {edges} imports between modules");
    assert_eq!(
        cycle(&graph),
        None,
        "an import cycle between gateway modules"
    );
}
