//! The layering rule of this crate: its module import graph has no cycle (a lower layer never
//! names an upper one). The graph is computed from the source: every `crate::…`, `super::…` and
//! `self::…` path outside comments, `#[cfg(test)] mod tests` and `tests.rs` files, resolved to the module that
//! defines it (following `pub use` re-exports), is an arrow from the file that names it.
//!
//! Two levels are checked:
//! - **files**: each module file is a node; arrows between a module and its own ancestors or
//!   descendants are left out (a parent declares its children, a child may use its parent's
//!   items);
//! - **top-level modules**: each of `src/*.rs` / `src/*/` is one node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every module file under `src/`, by module path (`[]` is the crate root).
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, prefix: &Module, out: &mut BTreeMap<Module, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                let mut m = prefix.clone();
                m.push(name);
                walk(&p, &m, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let mut m = prefix.clone();
                if name != "mod" && !(prefix.is_empty() && name == "lib") {
                    m.push(name);
                }
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &Vec::new(), &mut out);
    out
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests { … }`.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]" && lines.peek().is_some_and(|l| l.trim() == "mod tests {") {
            break; // by convention the last item of a file
        }
        let t = match t.find("//") {
            Some(i) => &t[..i],
            None => t,
        };
        out.push_str(t);
        out.push('\n');
    }
    out
}

/// The `use` statements of `code`, each expanded into its paths (`a::{b, c::d}` → `a::b`,
/// `a::c::d`), with whether it is a re-export (`pub use` / `pub(crate) use`).
fn uses(code: &str) -> Vec<(bool, String)> {
    fn expand(path: &str, out: &mut Vec<String>) {
        let path: String = path.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(open) = path.find('{') else {
            out.push(path);
            return;
        };
        let prefix = &path[..open];
        let inner = &path[open + 1..path.rfind('}').unwrap()];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&format!("{prefix}{}", &inner[start..i]), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if start < inner.len() {
            expand(&format!("{prefix}{}", &inner[start..]), out);
        }
    }
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = find_word(rest, "use ") {
        let before = rest[..i].trim_end();
        let reexport = before.ends_with("pub") || before.ends_with("pub(crate)");
        let stmt = &rest[i + 4..];
        let end = stmt.find(';').unwrap_or(stmt.len());
        let mut paths = Vec::new();
        // `a::b as c`: the path is `a::b`
        let stmt_text = stmt[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        expand(&stmt_text.replace(" as ", "#"), &mut paths);
        for p in paths {
            out.push((reexport, p.split('#').next().unwrap().to_owned()));
        }
        rest = &stmt[end..];
    }
    out
}

/// Position of `word` in `s` at a word start.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(word) {
        let at = from + i;
        let ok = at == 0 || !s[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        if ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Every `crate::a::b`, `super::a` or `self::a` path written outside `use` statements.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = find_word(&code[from..], start) {
            let at = from + i;
            let len = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - at);
            // `a::{b, c}` is a `use` group: `uses` expands it
            if !code[at + len..].starts_with('{') {
                out.push(code[at..at + len].trim_end_matches(':').to_owned());
            }
            from = at + len;
        }
    }
    out
}

/// `path` written in module `m` (a file), as segments from the crate root.
fn absolute(m: &Module, path: &str) -> Option<Module> {
    let mut segs = path.split("::").filter(|s| !s.is_empty());
    let first = segs.next()?;
    let mut abs: Module = match first {
        "crate" => Vec::new(),
        "self" => m.clone(),
        "super" => {
            let mut p = m.clone();
            p.pop()?;
            p
        }
        _ => return None, // an external crate, or a child named without `self::`
    };
    for s in segs {
        if s == "super" {
            abs.pop()?;
        } else {
            abs.push(s.to_owned());
        }
    }
    Some(abs)
}

/// The module that defines `abs`: the longest module prefix, then re-exports followed.
fn resolve(
    abs: &Module,
    known: &BTreeMap<Module, PathBuf>,
    reexports: &BTreeMap<Module, BTreeMap<String, Module>>,
    depth: usize,
) -> Module {
    let mut n = abs.len();
    while n > 0 && !known.contains_key(&abs[..n]) {
        n -= 1;
    }
    let module = abs[..n].to_vec();
    if depth < 8 {
        if let Some(name) = abs.get(n) {
            if let Some(target) = reexports.get(&module).and_then(|r| r.get(name)) {
                let mut next = target.clone();
                next.extend(abs[n + 1..].iter().cloned());
                return resolve(&next, known, reexports, depth + 1);
            }
        }
    }
    module
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let codes: BTreeMap<Module, String> = known
        .iter()
        // unit-test files (`x/tests.rs`) are test code, like a `#[cfg(test)] mod tests`
        .filter(|(m, _)| m.last().is_none_or(|l| l != "tests"))
        .map(|(m, p)| (m.clone(), code(&std::fs::read_to_string(p).unwrap())))
        .collect();
    // re-exports: `pub use x::Y` in module m makes m::Y point at x::Y
    let mut reexports: BTreeMap<Module, BTreeMap<String, Module>> = BTreeMap::new();
    for (m, c) in &codes {
        for (reexport, path) in uses(c) {
            if !reexport {
                continue;
            }
            let rel = if path.starts_with("crate::")
                || path.starts_with("super::")
                || path.starts_with("self::")
            {
                path.clone()
            } else if known.contains_key(
                &[m.clone(), vec![path.split("::").next().unwrap().to_owned()]].concat(),
            ) {
                format!("self::{path}")
            } else {
                continue;
            };
            if let Some(abs) = absolute(m, &rel) {
                if let Some(name) = abs.last() {
                    if name != "self" && name != "*" {
                        reexports
                            .entry(m.clone())
                            .or_default()
                            .insert(name.clone(), abs);
                    }
                }
            }
        }
    }
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, c) in &codes {
        let paths = uses(c).into_iter().map(|(_, p)| p).chain(inline_paths(c));
        for p in paths {
            let Some(abs) = absolute(m, &p) else { continue };
            let abs: Module = abs
                .into_iter()
                .filter(|s| s != "self" && s != "*")
                .collect();
            let to = resolve(&abs, &known, &reexports, 0);
            edges.entry(m.clone()).or_default().insert(to);
        }
        edges.entry(m.clone()).or_default();
    }
    edges
}

/// The strongly connected components of more than one node (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a Module) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.edges.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[w].min(self.low[v]);
                    self.low.insert(v, l);
                } else if self.on.contains(w) {
                    let l = self.index[w].min(self.low[v]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on.remove(w);
                    scc.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn report(level: &str, edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    cycles(edges)
        .into_iter()
        .map(|scc| {
            let members: BTreeSet<&Module> = scc.iter().collect();
            let arrows: Vec<String> = scc
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| members.contains(b))
                        .map(move |b| format!("{} -> {}", name(a), name(b)))
                })
                .collect();
            format!("{level} cycle: {}", arrows.join(", "))
        })
        .collect()
}

fn is_prefix(a: &Module, b: &Module) -> bool {
    a.len() <= b.len() && b[..a.len()] == a[..]
}

#[test]
fn no_import_cycles() {
    let all = graph();
    // files: without arrows along the module tree
    let files: BTreeMap<Module, BTreeSet<Module>> = all
        .iter()
        .map(|(a, to)| {
            let to = to
                .iter()
                .filter(|b| !is_prefix(a, b) && !is_prefix(b, a))
                .cloned()
                .collect();
            (a.clone(), to)
        })
        .collect();
    // top-level modules
    let mut top: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (a, to) in &all {
        let Some(ta) = a.first() else { continue };
        let entry = top.entry(vec![ta.clone()]).or_default();
        for b in to {
            if let Some(tb) = b.first() {
                if tb != ta {
                    entry.insert(vec![tb.clone()]);
                }
            }
        }
    }
    let mut found = report("file", &files);
    found.extend(report("top-level module", &top));
    assert!(
        found.is_empty(),
        "import cycles in crates/quicshard/src:\n{}",
        found.join("\n")
    );
}

/// The checker itself: a cycle it must find, and arrows along the module tree it must not count.
#[test]
fn the_checker_finds_a_cycle() {
    let m = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("c")]));
    edges.insert(m("c"), BTreeSet::from([m("a")]));
    edges.insert(m("d"), BTreeSet::from([m("a")]));
    assert_eq!(cycles(&edges), vec![vec![m("a"), m("b"), m("c")]]);
    let here = m("shard::io");
    assert_eq!(
        absolute(&here, "super::mem::MemPort"),
        Some(m("shard::mem::MemPort"))
    );
    assert_eq!(
        absolute(&here, "crate::stats::Counters"),
        Some(m("stats::Counters"))
    );
    let u = uses("pub(crate) use super::{a::{B, C}, d};\nuse crate::x as y;");
    assert_eq!(
        u,
        vec![
            (true, "super::a::B".to_owned()),
            (true, "super::a::C".to_owned()),
            (true, "super::d".to_owned()),
            (false, "crate::x".to_owned()),
        ]
    );
}
