//! The layers of `src/`, checked (ARCHITECTURE.md, "Boundaries").
//!
//! In the spirit of rust-analyzer's tidy tests: no dependency, no build of
//! the crate, just the source read as text. Every `crate::` and `super::`
//! path in `src/` (in `use` items, groups such as `use crate::{a, b::c}`
//! included, and inline) is resolved to the module it names, and
//!
//! - [`layers_are_respected`] fails on any use of a higher layer, or of a
//!   module of the same layer along an edge ARCHITECTURE.md does not list,
//!   naming the file, the line and the rule broken;
//! - [`files_do_not_import_each_other_in_a_cycle`] fails on a cycle in the
//!   file-level import graph (a module and its own submodules, which Rust
//!   nests, excepted; so are the uses of a file's `mod tests`, which the
//!   library does not contain), printing the cycle.
//!
//! Comments and string literals are skipped: a doc link names a module but
//! does not use it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The layers, bottom to top. Keep in step with ARCHITECTURE.md.
const LAYERS: &[(&str, &[&str])] = &[
    ("the contract", &["api"]),
    (
        "plumbing",
        &[
            "auth", "http", "tls", "events", "metrics", "process", "gate",
        ],
    ),
    ("engines", &["storage", "ratelimit", "control"]),
    (
        "components",
        &["node", "registry", "gateway", "coordinator", "hosts"],
    ),
    ("composition", &["up", "child_cluster", "labconfig"]),
    (
        "tools",
        &["client", "assess", "check", "bench", "lab", "grade_node"],
    ),
];

/// The edges allowed inside a layer: (from module, to path prefix, why).
/// Keep in step with ARCHITECTURE.md, and keep it short.
const EDGES: &[(&str, &str, &str)] = &[
    ("http", "auth", "every client carries the cluster secret"),
    (
        "http",
        "gate",
        "every listener refuses oversized bodies at its gate",
    ),
    (
        "auth",
        "gate",
        "the access rules are a gate in front of each router",
    ),
    (
        "http",
        "tls",
        "every client trusts the cluster CA and TLS listeners handshake first",
    ),
    (
        "coordinator",
        "hosts",
        "the coordinator places nodes on hosts and injects faults there",
    ),
    (
        "coordinator",
        "node::command_line",
        "whoever starts a node writes its command line with node's code",
    ),
    (
        "hosts",
        "node::command_line",
        "whoever starts a node writes its command line with node's code",
    ),
    ("up", "labconfig", "`up --config` reads the lab's config"),
    (
        "grade_node",
        "check",
        "grade-node's cluster test is a `kvlab check` run",
    ),
    (
        "grade_node",
        "assess",
        "grade-node gives the report formats and exit codes of `kvlab assess`",
    ),
];

/// Files that are not modules of the library.
const NOT_LIBRARY: &[&str] = &["main.rs"];

#[test]
fn layers_are_respected() {
    let files = read_src();
    let violations: Vec<String> = files
        .iter()
        .flat_map(|f| check_layers(f).into_iter().map(|v| v.to_string()))
        .collect();
    assert!(
        violations.is_empty(),
        "{} import(s) break the layers of ARCHITECTURE.md (\"Boundaries\"):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn files_do_not_import_each_other_in_a_cycle() {
    let files = read_src();
    let cycles = cycles(&files);
    let mut text = String::new();
    for cycle in &cycles {
        writeln!(text, "cycle:").unwrap();
        for (from, line, to) in cycle {
            writeln!(text, "  {from}:{line} uses {to}").unwrap();
        }
    }
    assert!(
        cycles.is_empty(),
        "{} import cycle(s) between files:\n{text}",
        cycles.len()
    );
}

#[test]
fn every_module_is_in_a_layer() {
    for file in read_src() {
        if let Some(top) = file.module.first() {
            assert!(
                layer_of(top).is_some(),
                "{}: module `{top}` is in no layer; add it to ARCHITECTURE.md \
                 (\"Boundaries\") and to LAYERS in tests/architecture.rs",
                file.path
            );
        }
    }
}

/// `layout/hot-code.txt` is read by the linker (`build.rs`), which takes
/// every line as a symbol's name: a hand edit that joins two names, or a
/// list cut short, would silently lay the code out worse. It is made by
/// `bench/code-layout.sh`; this checks its shape, not its freshness.
#[test]
fn the_code_layout_lists_are_one_symbol_name_a_line() {
    // One list for the default (dynamically linked) build, one for the
    // static one (build.rs picks it; its symbol names differ).
    for list in ["layout/hot-code.txt", "layout/hot-code-static.txt"] {
        check_layout_list(&Path::new(env!("CARGO_MANIFEST_DIR")).join(list));
    }
}

fn check_layout_list(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(names.len() > 500, "only {} names in {path:?}", names.len());
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        // callgrind's names for code it cannot name ("(below main)", an
        // address) are no symbols.
        assert!(
            !name.contains(char::is_whitespace) && !name.starts_with(['(', '0']),
            "{path:?}: `{name}` is not one symbol name"
        );
        assert!(seen.insert(name), "{path:?}: `{name}` is listed twice");
    }
}

// ---- the checker checked, on synthetic input ----

#[test]
fn the_parser_finds_grouped_nested_and_inline_paths() {
    let src = r#"
use crate::{api::Entry, http::{self, ApiError}};
use super::sibling::Thing as Other;
// use crate::gateway::Commented;
/// [`crate::registry::Doc`]
fn f() {
    let s = "crate::check::InAString";
    let c = '{';
    crate::storage::wal::slow_down_fsyncs(1);
}
pub(crate) fn g<'a>(x: &'a str) -> &'a str { x }
mod tests {
    use super::super::grade;
}
"#;
    let found: Vec<(usize, String)> = paths(src, &["assess".into(), "render".into()])
        .into_iter()
        .map(|(line, p, _)| (line, p.join("::")))
        .collect();
    assert_eq!(
        found,
        vec![
            (2, "api::Entry".to_string()),
            (2, "http".to_string()),
            (2, "http::ApiError".to_string()),
            (3, "assess::sibling::Thing".to_string()),
            (9, "storage::wal::slow_down_fsyncs".to_string()),
            (13, "assess::grade".to_string()),
        ]
    );
}

#[test]
fn a_use_of_a_higher_layer_or_a_sibling_component_is_reported() {
    let file = SrcFile::new(
        "src/node/faults.rs",
        "use crate::api::Entry;\n\
         use crate::hosts::netns::Direction;\n\
         fn f() { crate::check::run(); }\n",
    );
    let broken: Vec<String> = check_layers(&file).iter().map(|v| v.to_string()).collect();
    assert_eq!(broken.len(), 2, "{broken:#?}");
    assert!(broken[0].starts_with("src/node/faults.rs:2: node uses hosts::netns::Direction"));
    assert!(broken[0].contains("same layer (components)"));
    assert!(broken[1].starts_with("src/node/faults.rs:3: node uses check::run"));
    assert!(broken[1].contains("a higher layer (tools)"));
    // An edge ARCHITECTURE.md lists is allowed, and only that path.
    let docker = SrcFile::new(
        "src/hosts/docker.rs",
        "use crate::node::command_line::Placement;\nuse crate::node::NodeState;\n",
    );
    let broken = check_layers(&docker);
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].line, 2);
}

#[test]
fn a_cycle_between_files_is_found_but_not_one_with_a_parent() {
    let files = vec![
        SrcFile::new("src/coordinator/mod.rs", "use self::runtime::X;\n"),
        SrcFile::new(
            "src/coordinator/runtime.rs",
            "use super::Coordinator;\nuse super::membership::process_exists;\n",
        ),
        SrcFile::new(
            "src/coordinator/membership.rs",
            "use super::Coordinator;\n\nuse super::runtime::Runtime;\n",
        ),
    ];
    let found = cycles(&files);
    assert_eq!(found.len(), 1, "{found:#?}");
    let files_in: BTreeSet<&str> = found[0].iter().map(|(f, _, _)| f.as_str()).collect();
    assert_eq!(
        files_in,
        BTreeSet::from([
            "src/coordinator/membership.rs",
            "src/coordinator/runtime.rs"
        ])
    );
    assert!(cycles(&files[..2]).is_empty());
}

// ---- the source ----

struct SrcFile {
    /// As printed: `src/node/faults.rs`.
    path: String,
    /// The module the file is: `["node", "faults"]` (`[]` for lib.rs).
    module: Vec<String>,
    /// Every `crate::`/`super::` path, resolved from the crate root, with its line.
    uses: Vec<(usize, Vec<String>)>,
    /// The lines of `uses` inside an inline `mod tests`.
    test_lines: BTreeSet<usize>,
}

impl SrcFile {
    fn new(path: &str, text: &str) -> SrcFile {
        let module = module_of(path);
        let mut here = module.clone();
        here.push("tests".into());
        let (uses, test_lines) = paths(text, &module)
            .into_iter()
            .map(|(line, path, in_module)| ((line, path), (in_module == here).then_some(line)))
            .unzip::<_, _, Vec<_>, Vec<_>>();
        SrcFile {
            path: path.to_string(),
            module,
            uses,
            test_lines: test_lines.into_iter().flatten().collect(),
        }
    }
}

fn read_src() -> Vec<SrcFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    walk(&root.join("src"), &mut found);
    found.sort();
    found
        .iter()
        .filter(|p| {
            !NOT_LIBRARY
                .iter()
                .any(|n| p.ends_with(Path::new("src").join(n)))
        })
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            SrcFile::new(&rel, &std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `src/lib.rs` the root.
fn module_of(path: &str) -> Vec<String> {
    let rel = path.strip_prefix("src/").unwrap_or(path);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

// ---- the parser: tokens without comments and literals, then paths ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Sym(char),
}

fn tokens(src: &str) -> Vec<(usize, Tok)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' || ((ch == 'r' || ch == 'b') && is_raw_or_byte_string(&c, i)) {
            // Skip the prefix (b, r, br) and the hashes, then the body.
            let mut raw = false;
            while c[i] != '"' && c[i] != '#' {
                raw |= c[i] == 'r';
                i += 1;
            }
            let mut hashes = 0;
            while c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            while i < c.len() {
                if c[i] == '\n' {
                    line += 1;
                }
                if !raw && c[i] == '\\' {
                    line += usize::from(at(i + 1) == '\n');
                    i += 2;
                    continue;
                }
                if c[i] == '"' && (i + 1..=i + hashes).all(|j| at(j) == '#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((line, Tok::Ident(c[start..i].iter().collect())));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((line, Tok::PathSep));
            i += 2;
        } else {
            out.push((line, Tok::Sym(ch)));
            i += 1;
        }
    }
    out
}

/// Does a string literal with a prefix (`r"`, `r#"`, `b"`, `br"`) start at `i`?
fn is_raw_or_byte_string(c: &[char], i: usize) -> bool {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return false;
    }
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) == Some(&'r') {
        j += 1;
        while c.get(j) == Some(&'#') {
            j += 1;
        }
    }
    j > i && c.get(j) == Some(&'"')
}

/// Every `crate::` and `super::` path in `src`, resolved from the crate root
/// (`module` is the file's own module), with the line it starts on and the
/// (inline) module it is in.
fn paths(src: &str, module: &[String]) -> Vec<(usize, Vec<String>, Vec<String>)> {
    let toks = tokens(src);
    let mut out = Vec::new();
    // Inline modules (`mod tests { ... }`): their name and brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let (mut depth, mut pending_mod) = (0usize, None::<String>);
    let mut i = 0;
    while i < toks.len() {
        let (line, tok) = &toks[i];
        let starts_path = matches!(tok, Tok::Ident(s) if s == "crate" || s == "super")
            && toks.get(i + 1).map(|t| &t.1) == Some(&Tok::PathSep)
            && (i == 0 || toks[i - 1].1 != Tok::PathSep);
        if starts_path {
            let mut raw = Vec::new();
            i = path_tree(&toks, i, Vec::new(), &mut raw);
            let mut here: Vec<String> = module.to_vec();
            here.extend(inline.iter().map(|(name, _)| name.clone()));
            for p in raw {
                if let Some(resolved) = resolve(&p, &here) {
                    out.push((*line, resolved, here.clone()));
                }
            }
            continue;
        }
        match tok {
            Tok::Ident(s) if s == "mod" => {
                if let Some((_, Tok::Ident(name))) = toks.get(i + 1) {
                    pending_mod = Some(name.clone());
                    i += 1;
                }
            }
            Tok::Sym('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                }
            }
            Tok::Sym('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Sym(';') => pending_mod = None,
            _ => {}
        }
        i += 1;
    }
    out
}

/// Reads one path, or a `{ ... }` group of them, from `i`; returns where it ends.
fn path_tree(
    toks: &[(usize, Tok)],
    mut i: usize,
    mut segs: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match toks.get(i).map(|t| &t.1) {
            Some(Tok::Ident(s)) => {
                if s != "self" || segs.is_empty() {
                    segs.push(s.clone());
                }
                i += 1;
            }
            Some(Tok::Sym('{')) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.1) {
                        None => return i,
                        Some(Tok::Sym('}')) => return i + 1,
                        Some(Tok::Sym(',')) => i += 1,
                        _ => i = path_tree(toks, i, segs.clone(), out),
                    }
                }
            }
            _ => {
                // `*`, or the path ends without a segment after `::`.
                out.push(segs);
                return i + usize::from(matches!(toks.get(i).map(|t| &t.1), Some(Tok::Sym('*'))));
            }
        }
        if toks.get(i).map(|t| &t.1) == Some(&Tok::PathSep) {
            i += 1;
        } else {
            out.push(segs);
            return i;
        }
    }
}

/// `crate::a::b` is `a::b`; `super::x` is relative to `here`'s parent.
fn resolve(path: &[String], here: &[String]) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    if first == "crate" {
        return Some(rest.to_vec());
    }
    let mut base = here.to_vec();
    let mut rest = path;
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

// ---- the rules ----

struct Violation {
    path: String,
    line: usize,
    from: String,
    to: String,
    rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {} uses {}: {}",
            self.path, self.line, self.from, self.to, self.rule
        )
    }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

fn check_layers(file: &SrcFile) -> Vec<Violation> {
    let Some(from) = file.module.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (line, target) in &file.uses {
        let Some(to) = target.first() else { continue };
        if to == from {
            continue;
        }
        let rule = match (layer_of(from), layer_of(to)) {
            (_, None)
                if file.module.len() == 1 && to.chars().next().is_some_and(char::is_uppercase) =>
            {
                // `super::Thing` from a top-level file: an item of lib.rs.
                continue;
            }
            (Some(a), Some(b)) if b < a => continue,
            (Some(a), Some(b)) if b > a => format!(
                "`{from}` ({}) may not use `{to}`, a higher layer ({})",
                LAYERS[a].0, LAYERS[b].0
            ),
            (Some(a), Some(_)) => {
                let joined = target.join("::");
                let allowed = EDGES.iter().any(|(f, prefix, _)| {
                    f == from && (joined == *prefix || joined.starts_with(&format!("{prefix}::")))
                });
                if allowed {
                    continue;
                }
                format!(
                    "`{from}` may not use `{to}`, a module of the same layer ({}): \
                     only the edges ARCHITECTURE.md (\"Boundaries\") lists are allowed",
                    LAYERS[a].0
                )
            }
            (None, _) => format!("`{from}` is in no layer of ARCHITECTURE.md"),
            (_, None) => format!("`{to}` is in no layer of ARCHITECTURE.md"),
        };
        out.push(Violation {
            path: file.path.clone(),
            line: *line,
            from: from.clone(),
            to: target.join("::"),
            rule,
        });
    }
    out
}

/// One cycle per strongly connected group of files, as (file, line, used file).
fn cycles(files: &[SrcFile]) -> Vec<Vec<(String, usize, String)>> {
    let by_module: BTreeMap<&[String], usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.as_slice(), i))
        .collect();
    // The file a path lands in: its longest prefix that is a file's module.
    let file_of = |path: &[String]| {
        (0..=path.len())
            .rev()
            .find_map(|n| by_module.get(&path[..n]).copied())
    };
    let nested = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    // edges[i]: file j -> first line in i that uses it.
    let mut edges: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); files.len()];
    for (i, f) in files.iter().enumerate() {
        for (line, path) in &f.uses {
            if f.test_lines.contains(line) {
                continue;
            }
            if let Some(j) = file_of(path) {
                if j != i && !nested(&f.module, &files[j].module) {
                    edges[i].entry(j).or_insert(*line);
                }
            }
        }
    }
    let mut out = Vec::new();
    for group in strongly_connected(&edges) {
        if group.len() < 2 {
            continue;
        }
        let cycle = cycle_in(&edges, &group);
        out.push(
            cycle
                .windows(2)
                .map(|w| {
                    (
                        files[w[0]].path.clone(),
                        edges[w[0]][&w[1]],
                        files[w[1]].path.clone(),
                    )
                })
                .collect(),
        );
    }
    out
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &[BTreeMap<usize, usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [BTreeMap<usize, usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        groups: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges[v].keys() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            s.groups.push(group);
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        groups: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.groups
}

/// A cycle through the group's smallest file, as a list of files that
/// starts and ends with it (breadth-first, so the shortest one).
fn cycle_in(edges: &[BTreeMap<usize, usize>], group: &[usize]) -> Vec<usize> {
    let members: BTreeSet<usize> = group.iter().copied().collect();
    let start = *members.first().unwrap();
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in edges[v].keys().filter(|w| members.contains(w)) {
            if w == start {
                let mut cycle = vec![start, v];
                let mut at = v;
                while at != start {
                    at = came_from[&at];
                    cycle.push(at);
                }
                cycle.reverse();
                return cycle;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = came_from.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected group has a cycle through each member")
}
