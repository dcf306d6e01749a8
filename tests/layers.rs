//! The shape of the code, checked: no circle of imports between the
//! top-level modules of any crate, `sitrep-node`'s modules in their declared
//! layers (each imports only those below it), `node.rs` under 400 lines, and
//! every module file opening with a `//!` line that says what it is.
//! Unit-test modules (`#[cfg(test)] mod tests`) are left out of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `sitrep-node`'s layers, bottom first (see its `lib.rs`).
const NODE_LAYERS: &[&[&str]] = &[
    &["clock", "config", "event", "metrics"],
    &["error", "verifier"],
    &["feedstate"],
    &["shared"],
    &["service"],
    &["ingress", "link", "sweeper", "feeds"],
    &["api"],
    &["node"],
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None`: the crate root).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    match name.as_str() {
        "lib" | "main" => None,
        _ => Some(name),
    }
}

/// The top-level modules a piece of code names through `crate::`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            // Not `sitrep_crate::` or the like.
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::b, c}`: the first name of each item.
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Module → the other top-level modules it imports, for one crate.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> =
        modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for f in &files {
        let Some(m) = module_of(src, f) else { continue };
        let code = std::fs::read_to_string(f).expect("read");
        // A module's unit tests may use any module of the crate (fixtures):
        // they are not part of what the module depends on.
        let code = code.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        for r in crate_refs(code) {
            if r != m && modules.contains(&r) {
                g.get_mut(&m).expect("module").insert(r);
            }
        }
    }
    g
}

/// A circle of imports, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut c = stack[i..].to_vec();
            c.push(m.to_owned());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_owned());
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(g, m, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn crates() -> Vec<PathBuf> {
    let mut out = vec![workspace().join("tests/support")];
    let mut dirs: Vec<_> = std::fs::read_dir(workspace().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    out.extend(dirs);
    out
}

#[test]
fn no_crate_has_a_circle_of_imports() {
    for src in crates() {
        let g = graph(&src);
        assert!(
            find_cycle(&g).is_none(),
            "{}: modules import each other in a circle: {}",
            src.display(),
            find_cycle(&g).unwrap_or_default().join(" → ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_circle() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), BTreeSet::from([v.to_owned()])))
        .collect();
    assert_eq!(find_cycle(&g).expect("a circle"), ["a", "b", "c", "a"]);
    assert_eq!(
        crate_refs("use crate::{config::Role, error::X};\nlet x = crate::shared::lock(m);\n// crate::node\n"),
        BTreeSet::from(["config".to_owned(), "error".to_owned(), "shared".to_owned()])
    );
}

#[test]
fn node_modules_import_only_layers_below() {
    let g = graph(&workspace().join("crates/sitrep-node/src"));
    let layer = |m: &str| {
        NODE_LAYERS
            .iter()
            .position(|l| l.contains(&m))
            .unwrap_or_else(|| panic!("module {m} is in no layer of NODE_LAYERS"))
    };
    for (m, deps) in &g {
        for d in deps {
            assert!(
                layer(d) < layer(m),
                "sitrep-node: {m} (layer {}) imports {d} (layer {})",
                layer(m),
                layer(d)
            );
        }
    }
}

#[test]
fn node_rs_is_short_and_every_module_says_what_it_is() {
    let node = std::fs::read_to_string(workspace().join("crates/sitrep-node/src/node.rs")).expect("node.rs");
    assert!(
        node.lines().count() < 400,
        "node.rs has {} lines",
        node.lines().count()
    );
    for src in crates() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let code = std::fs::read_to_string(&f).expect("read");
            assert!(
                code.trim_start().starts_with("//!"),
                "{} does not open with a //! line",
                f.display()
            );
        }
    }
}
