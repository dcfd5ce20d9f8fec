//! The source layout rules of docs/architecture.md and STYLE: no two files
//! of a crate import each other, and no source file holds more than about
//! 1,000 lines of non-test code. Checked over every crate, bench and
//! example, so a change that breaks them fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 1000;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code before the file's first `#[cfg(test)]`, without comment lines.
fn non_test(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// A file's module path within its crate (`lib.rs`/`main.rs`/`mod.rs` name
/// their directory's module).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    parts
}

/// The paths a `crate::`/`super::` reference names: `a::b`, or each item
/// of a group `{a::b, c}` (one level of braces).
fn referenced(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect()
    };
    if let Some(group) = rest.strip_prefix('{') {
        let inner: String = group.chars().take_while(|c| *c != '}').collect();
        inner
            .split(',')
            .map(|item| ident(item.trim()))
            .filter(|p| !p.is_empty())
            .collect()
    } else {
        let path = ident(rest);
        // `crate::x::{a, b}`: the group's items under `x`.
        let after = &rest[path.len()..];
        if path.ends_with("::") && after.starts_with('{') {
            return referenced(after)
                .into_iter()
                .map(|item| format!("{path}{item}"))
                .collect();
        }
        vec![path]
    }
}

/// The files of one crate (`src` dir) that import each other. An import
/// of a name a `lib.rs`/`mod.rs` only re-exports counts as an import of
/// the file that defines it.
fn cycles(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let is_root = |f: &Path| {
        matches!(
            f.file_stem().and_then(|s| s.to_str()),
            Some("lib" | "main" | "mod")
        )
    };
    // Names each root re-exports, and from which child module.
    let mut reexports: BTreeMap<(Vec<String>, String), Vec<String>> = BTreeMap::new();
    for (me, file) in &modules {
        if !is_root(file) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for line in non_test(&text) {
            let l = line.trim_start();
            let Some(rest) = l
                .strip_prefix("pub use ")
                .or(l.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            for path in referenced(rest.trim_end_matches(';')) {
                let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
                if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
                    let mut child = me.clone();
                    child.push(first.to_string());
                    if modules.contains_key(&child) {
                        reexports.insert((me.clone(), last.to_string()), child);
                    }
                }
            }
        }
    }
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (me, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let code = non_test(&text).join("\n");
        let parent = me[..me.len().saturating_sub(1)].to_vec();
        let deps = edges.entry(me.clone()).or_default();
        let mut add = |start: Vec<String>, path: &str| {
            let mut cur = start;
            for seg in path.split("::").filter(|s| !s.is_empty()) {
                let mut next = cur.clone();
                next.push(seg.to_string());
                if modules.contains_key(&next) {
                    cur = next;
                    continue;
                }
                if let Some(child) = reexports.get(&(cur.clone(), seg.to_string())) {
                    cur = child.clone();
                }
                break;
            }
            if cur != *me && modules.contains_key(&cur) {
                deps.insert(cur);
            }
        };
        for (prefix, start) in [("crate::", Vec::new()), ("super::", parent.clone())] {
            for (i, _) in code.match_indices(prefix) {
                if code[..i].ends_with('$') {
                    continue; // `$crate::` in a macro
                }
                for path in referenced(&code[i + prefix.len()..]) {
                    add(start.clone(), &path);
                }
            }
        }
        if is_root(file) {
            // `use child::…` (not `pub use`, which is wiring) in a lib.rs
            // or mod.rs: the root uses the child.
            for line in code.lines() {
                let Some(rest) = line.trim_start().strip_prefix("use ") else {
                    continue;
                };
                let child: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let mut m = me.clone();
                m.push(child);
                if modules.contains_key(&m) {
                    deps.insert(m);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (a, deps) in &edges {
        for b in deps {
            if a < b && edges.get(b).is_some_and(|d| d.contains(a)) {
                out.push(format!(
                    "{} <-> {}",
                    modules[a].display(),
                    modules[b].display()
                ));
            }
        }
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_two_files_of_a_crate_import_each_other() {
    let mut found = Vec::new();
    let crates = std::fs::read_dir(root().join("crates")).unwrap();
    for c in crates.flatten() {
        let src = c.path().join("src");
        if src.is_dir() {
            found.extend(cycles(&src));
        }
    }
    found.extend(cycles(&root().join("src")));
    assert!(
        found.is_empty(),
        "files that import each other:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_source_file_holds_more_than_about_1000_lines_of_non_test_code() {
    let mut files = Vec::new();
    for dir in ["crates", "src", "benches", "examples"] {
        rust_files(&root().join(dir), &mut files);
    }
    // Test files are test code; the rule is about code that ships or measures.
    let long: Vec<String> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            !name.ends_with("_tests.rs") && name != "tests.rs"
        })
        .filter_map(|f| {
            let n = non_test(&std::fs::read_to_string(f).unwrap()).len();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines of non-test code:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checks_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::a::A;\npub struct B;\n").unwrap();
    assert_eq!(cycles(src).len(), 1);
    std::fs::write(src.join("b.rs"), "pub struct B;\n").unwrap();
    assert!(cycles(src).is_empty());
    // A lib.rs that defines what a module imports, and uses the module.
    std::fs::write(src.join("lib.rs"), "mod a;\nuse a::A;\npub struct L(A);\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{L};\npub struct A;\n").unwrap();
    assert_eq!(cycles(src).len(), 1);
    // Re-exports are wiring: importing a re-exported name is importing the
    // file that defines it.
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use b::B;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::a::A;\npub struct B;\n").unwrap();
    assert_eq!(cycles(src).len(), 1, "a <-> b through lib's re-export");
}
