//! Every relative link in every Markdown file of the repository resolves.
//!
//! A link `[text](path)` or `![alt](path)` must name a file or folder that exists,
//! relative to the file it is in. A link with an anchor, `[text](path#anchor)` or
//! `[text](#anchor)`, must also name a heading of the target that GitHub turns into
//! that anchor. Links to other sites (`http:`, `https:`, `mailto:`) are not checked.
//! Links inside code blocks and code spans are not links and are skipped.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Folders that hold no documentation of ours: build output, git's store, and the
/// fuzzer's inputs and findings.
const SKIP_DIRS: &[&str] = &[
    "target",
    ".git",
    "fuzz/corpus",
    "fuzz/artifacts",
    "fuzz/generated",
    "fuzz/target",
    "fuzz/coverage",
    "node_modules",
];

/// A link that does not resolve: where it is and why.
#[derive(Debug)]
struct Broken {
    file: PathBuf,
    line: usize,
    link: String,
    reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: ({}) {}",
            self.file.display(),
            self.line,
            self.link,
            self.reason
        )
    }
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel = rel.to_string_lossy().replace('\\', "/");
            if path.is_dir() {
                if !SKIP_DIRS.contains(&rel.as_str()) && !rel.ends_with("/target") {
                    stack.push(path);
                }
            } else if rel.ends_with(".md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The anchor GitHub gives a heading: lower case, spaces to `-`, and every
/// character dropped that is not a letter, a digit, `-` or `_`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = if trimmed.starts_with("```") {
            Some("```")
        } else if trimmed.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// Every anchor the headings of a Markdown text produce (a repeated heading gets
/// `-1`, `-2`, ... as on GitHub).
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(text) {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 {
            continue;
        }
        let rest = &trimmed[hashes..];
        if !(rest.is_empty() || rest.starts_with(' ')) {
            continue;
        }
        let title = rest.trim().trim_end_matches('#').trim();
        let base = slug(&link_text_only(title));
        let mut candidate = base.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// A heading's text with any `[text](target)` reduced to `text`, as GitHub slugs it.
fn link_text_only(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](") {
            Some(close) => match after[close + 2..].find(')') {
                Some(end) => {
                    out.push_str(&after[..close]);
                    rest = &after[close + 2 + end + 1..];
                }
                None => {
                    out.push_str(&rest[open..]);
                    rest = "";
                }
            },
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A line with its code spans blanked out, so that `[a](b)` in backticks is not a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '`' {
            out.push(c);
            continue;
        }
        let mut ticks = 1;
        while chars.peek() == Some(&'`') {
            chars.next();
            ticks += 1;
        }
        // Skip to the matching run of the same number of backticks.
        let rest: String = chars.clone().collect();
        let closing = "`".repeat(ticks);
        match rest.find(&closing) {
            Some(end) => {
                for _ in 0..rest[..end].chars().count() + ticks {
                    chars.next();
                }
                out.push(' ');
            }
            None => out.push_str(&closing),
        }
    }
    out
}

/// The targets of the inline links on one line: what is inside `](...)`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(pos) = rest.find("](") {
        let after = &rest[pos + 2..];
        let Some(end) = after.find(')') else { break };
        let mut target = after[..end].trim();
        // `(path "title")`: the title is not part of the target.
        if let Some(space) = target.find(' ') {
            target = &target[..space];
        }
        let target = target.trim_start_matches('<').trim_end_matches('>');
        if !target.is_empty() {
            out.push(target.to_string());
        }
        rest = &after[end + 1..];
    }
    out
}

fn is_external(target: &str) -> bool {
    let lower = target.to_lowercase();
    lower.starts_with("http:")
        || lower.starts_with("https:")
        || lower.starts_with("mailto:")
        || lower.contains("://")
}

/// Checks every relative link of one Markdown file.
fn check_file(file: &Path, text: &str) -> Vec<Broken> {
    let mut broken = Vec::new();
    let dir = file.parent().unwrap_or(Path::new("."));
    for (line_no, line) in prose_lines(text) {
        for link in link_targets(line) {
            if is_external(&link) {
                continue;
            }
            let (path_part, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let fail = |reason: String| Broken {
                file: file.to_path_buf(),
                line: line_no,
                link: link.clone(),
                reason,
            };
            let target = if path_part.is_empty() {
                file.to_path_buf()
            } else {
                dir.join(path_part)
            };
            if !target.exists() {
                broken.push(fail(format!("no such file: {}", target.display())));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if anchor.is_empty() {
                continue;
            }
            if target.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            let target_text = if path_part.is_empty() {
                text.to_string()
            } else {
                fs::read_to_string(&target).unwrap_or_default()
            };
            if !anchors(&target_text).contains(&anchor.to_lowercase()) {
                broken.push(fail(format!(
                    "no heading in {} makes the anchor #{anchor}",
                    target.display()
                )));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_every_markdown_file_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = markdown_files(root);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "found no Markdown files under {}",
        root.display()
    );
    let mut broken = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read a Markdown file");
        let shown = file.strip_prefix(root).unwrap_or(file);
        for mut b in check_file(file, &text) {
            b.file = shown.to_path_buf();
            broken.push(b);
        }
    }
    let list: Vec<String> = broken.iter().map(ToString::to_string).collect();
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        list.join("\n")
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Security model"), "security-model");
    assert_eq!(
        slug("Netns hosts: nodes on their own network"),
        "netns-hosts-nodes-on-their-own-network"
    );
    assert_eq!(
        slug("Check it yourself: `kvlab check`"),
        "check-it-yourself-kvlab-check"
    );
    assert_eq!(slug("W + R > N"), "w--r--n");
    assert_eq!(slug("snake_case and-dash"), "snake_case-and-dash");
}

#[test]
fn the_checker_catches_broken_links_and_anchors() {
    let dir = std::env::temp_dir().join(format!("kvlab-docs-links-{}", std::process::id()));
    fs::create_dir_all(dir.join("docs")).unwrap();
    fs::write(
        dir.join("docs/page.md"),
        "# A page\n\n## Two words\n\n## Two words\n",
    )
    .unwrap();
    let readme = "\
# Top

[ok](docs/page.md) [ok anchor](docs/page.md#two-words) [repeat](docs/page.md#two-words-1)
[own](#top) [site](https://example.com/nothing) `[code](nowhere.md)`
[missing file](docs/nowhere.md)
[missing anchor](docs/page.md#three-words)
[missing own anchor](#bottom)

```
[in a fence](nowhere-either.md)
```
";
    let file = dir.join("README.md");
    fs::write(&file, readme).unwrap();
    let broken = check_file(&file, readme);
    fs::remove_dir_all(&dir).unwrap();

    let found: Vec<(usize, &str)> = broken.iter().map(|b| (b.line, b.link.as_str())).collect();
    assert_eq!(
        found,
        [
            (5, "docs/nowhere.md"),
            (6, "docs/page.md#three-words"),
            (7, "#bottom"),
        ],
        "{broken:#?}"
    );
    assert!(broken[0].to_string().contains("README.md:5:"));
}
