//! The import-circle check of `cargo xtask lint`: within a crate, no two sibling
//! modules may reach each other through `crate::`, `super::` or `self::` paths (in `use`
//! items or written out in code), directly or around a longer circle. A module's use
//! of its own parent or children is structure, not an arrow between layers, and is left
//! out; so is test code (`#[cfg(test)]` items). Each edge between two modules counts at
//! the level where their paths part: `record::plan` using `kernel::loader` is an arrow
//! `record → kernel` among the crate's top-level modules.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// A module path below the crate root (`["record", "plan"]`; empty: the root).
type ModPath = Vec<String>;

/// Fails when the crate whose sources are under `src` (lib.rs or main.rs at its top)
/// has an import circle, naming each circle and an import along every arrow in it.
pub fn check(src: &Path) -> anyhow::Result<()> {
    let modules = modules(src)?;
    let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
    // Arrows at the level where the two paths part: parent → (from child, to child),
    // each with one place that makes it.
    let mut arrows: BTreeMap<ModPath, BTreeMap<(String, String), String>> = BTreeMap::new();
    for (m, file) in &modules {
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let code = strip_tests(&strip_comments_and_strings(&text));
        for (line, path) in crate_paths(&code) {
            let Some(abs) = resolve(m, &path) else {
                continue;
            };
            let Some(target) = longest_module(&known, &abs) else {
                continue;
            };
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue; // itself, a parent or a child
            }
            let here = format!("{}:{line} uses {}", rel(file), path.join("::"));
            arrows
                .entry(m[..common].to_vec())
                .or_default()
                .entry((m[common].clone(), target[common].clone()))
                .or_insert(here);
        }
    }
    let mut found = vec![];
    for (parent, edges) in &arrows {
        for circle in circles(edges.keys()) {
            let name = |c: &String| {
                if parent.is_empty() {
                    c.clone()
                } else {
                    format!("{}::{c}", parent.join("::"))
                }
            };
            let mut text = format!(
                "import circle: {}",
                circle.iter().map(name).collect::<Vec<_>>().join(" ↔ ")
            );
            for a in &circle {
                for b in &circle {
                    if let Some(w) = edges.get(&(a.clone(), b.clone())) {
                        text.push_str(&format!("\n    {} → {}: {w}", name(a), name(b)));
                    }
                }
            }
            found.push(text);
        }
    }
    if !found.is_empty() {
        bail!(
            "{} has import circles:\n{}",
            src.display(),
            found.join("\n")
        );
    }
    Ok(())
}

fn rel(p: &Path) -> String {
    p.strip_prefix(crate::root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Every module of the crate backed by a file, from its root (lib.rs, else main.rs)
/// down through `mod x;` items that are not test-only.
fn modules(src: &Path) -> anyhow::Result<BTreeMap<ModPath, PathBuf>> {
    let root = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .find(|p| p.exists())
        .with_context(|| format!("no lib.rs or main.rs in {}", src.display()))?;
    let mut out = BTreeMap::new();
    let mut todo = vec![(vec![], root)];
    while let Some((m, file)) = todo.pop() {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let code = strip_tests(&strip_comments_and_strings(&text));
        // Children of a/mod.rs, lib.rs or main.rs live in a/; of a/b.rs, in a/b/.
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let dir = if matches!(stem, "mod" | "lib" | "main") {
            file.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            file.with_extension("")
        };
        for child in mod_decls(&code) {
            let f1 = dir.join(format!("{child}.rs"));
            let f2 = dir.join(&child).join("mod.rs");
            let f = if f1.exists() { f1 } else { f2 };
            if f.exists() {
                let mut cm = m.clone();
                cm.push(child);
                if !out.contains_key(&cm) {
                    todo.push((cm, f));
                }
            }
        }
        out.insert(m, file);
    }
    Ok(out)
}

/// `mod x;` items (not inline `mod x { … }` ones).
fn mod_decls(code: &str) -> Vec<String> {
    let mut out = vec![];
    for line in code.lines() {
        let l = line.trim();
        let l = l
            .strip_prefix("pub(crate) ")
            .or_else(|| l.strip_prefix("pub "))
            .unwrap_or(l);
        if let Some(rest) = l.strip_prefix("mod ") {
            if let Some(name) = rest.trim().strip_suffix(';') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

/// The text with comments and the contents of string and char literals blanked
/// (newlines kept, so line numbers hold).
fn strip_comments_and_strings(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let keep_newlines = |out: &mut String, cs: &[char]| {
        for c in cs {
            if *c == '\n' {
                out.push('\n');
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let start = i;
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            keep_newlines(&mut out, &b[start..i.min(b.len())]);
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string r"…" or r#"…"#.
            let start = i;
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            keep_newlines(&mut out, &b[start..j.min(b.len())]);
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            keep_newlines(&mut out, &b[start..i.min(b.len())]);
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), else a lifetime.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The text with every `#[cfg(test)]` item blanked (its lines kept empty).
fn strip_tests(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` outside braces, or where its braces close.
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        out.extend(item[..end].chars().filter(|c| *c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Every `crate::`, `super::` or `self::` path in the code with its line: `use` trees
/// expanded (`use crate::{a::b, c}` gives `crate::a::b` and `crate::c`), and paths
/// written out in expressions and types.
fn crate_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = vec![];
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        let at_word = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if at_word && starts_with(&chars, i, "use ") {
            let mut j = i + 4;
            let mut tree = String::new();
            while j < chars.len() && chars[j] != ';' {
                tree.push(chars[j]);
                j += 1;
            }
            for p in expand_use(&tree) {
                if matches!(
                    p.first().map(String::as_str),
                    Some("crate" | "super" | "self")
                ) {
                    out.push((line, p));
                }
            }
            line += tree.matches('\n').count();
            i = j;
            continue;
        }
        if at_word {
            for head in ["crate::", "super::", "self::"] {
                if starts_with(&chars, i, head) {
                    let mut j = i;
                    let mut p = String::new();
                    while j < chars.len()
                        && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == ':')
                    {
                        p.push(chars[j]);
                        j += 1;
                    }
                    let segs: Vec<String> = p
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    out.push((line, segs));
                    i = j;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

fn starts_with(chars: &[char], i: usize, s: &str) -> bool {
    s.chars()
        .enumerate()
        .all(|(k, c)| chars.get(i + k) == Some(&c))
}

/// The paths of a `use` tree (`a::{b, c::{d, e as f}}` → a::b, a::c::d, a::c::e).
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    // `e as f` keeps `e`: the alias marked before the spaces go.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let t: String = words.join(" ").replace(" as ", "@").replace(' ', "");
    let mut out = vec![];
    expand_into(&t, &[], &mut out);
    out
}

fn expand_into(t: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for part in split_top(t) {
        if let Some(open) = part.find('{') {
            let head = part[..open].trim_end_matches("::");
            let inner = part[open + 1..]
                .strip_suffix('}')
                .unwrap_or(&part[open + 1..]);
            let mut p = prefix.to_vec();
            p.extend(
                head.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            expand_into(inner, &p, out);
        } else {
            let path = part.split('@').next().unwrap_or(part);
            let mut p = prefix.to_vec();
            p.extend(
                path.split("::")
                    .filter(|s| !s.is_empty() && *s != "*")
                    .map(str::to_string),
            );
            if !p.is_empty() {
                out.push(p);
            }
        }
    }
}

/// Splits a use tree's list at its top-level commas.
fn split_top(t: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0;
    let mut start = 0;
    for (k, c) in t.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&t[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    out.push(&t[start..]);
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// A path as seen from module `m`, made absolute from the crate root.
fn resolve(m: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut segs = path.iter();
    let mut abs: ModPath = match segs.next()?.as_str() {
        "crate" => vec![],
        "self" => m.clone(),
        "super" => {
            let mut p = m.clone();
            p.pop()?;
            p
        }
        _ => return None,
    };
    for s in segs {
        if s == "super" {
            abs.pop()?;
        } else {
            abs.push(s.clone());
        }
    }
    Some(abs)
}

/// The deepest known module that `path` lies in.
fn longest_module(known: &BTreeSet<ModPath>, path: &ModPath) -> Option<ModPath> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
}

/// The circles (strongly connected parts of more than one module) of a graph.
fn circles<'a>(edges: impl Iterator<Item = &'a (String, String)>) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    // Tarjan's algorithm.
    struct T<'s> {
        index: BTreeMap<&'s str, usize>,
        low: BTreeMap<&'s str, usize>,
        stack: Vec<&'s str>,
        on: BTreeSet<&'s str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'s>(v: &'s str, adj: &BTreeMap<&'s str, Vec<&'s str>>, t: &mut T<'s>) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in adj.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(w, adj, t);
                let lw = t.low[w];
                if let Some(l) = t.low.get_mut(v) {
                    *l = (*l).min(lw);
                }
            } else if t.on.contains(w) {
                let iw = t.index[w];
                if let Some(l) = t.low.get_mut(v) {
                    *l = (*l).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut part = vec![];
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                part.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if part.len() > 1 {
                part.sort();
                t.out.push(part);
            }
        }
    }
    let mut t = T {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        next: 0,
        out: vec![],
    };
    for v in adj.keys() {
        if !t.index.contains_key(v) {
            visit(v, &adj, &mut t);
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand() {
        let p = expand_use("crate::{a::b, c::{d, e as f}, g}");
        let s: Vec<String> = p.iter().map(|p| p.join("::")).collect();
        assert_eq!(s, ["crate::a::b", "crate::c::d", "crate::c::e", "crate::g"]);
    }

    #[test]
    fn a_circle_is_found_and_a_chain_is_not() {
        let e = |a: &str, b: &str| (a.to_string(), b.to_string());
        let chain = [e("a", "b"), e("b", "c")];
        assert!(circles(chain.iter()).is_empty());
        let circle = [e("a", "b"), e("b", "c"), e("c", "a"), e("c", "d")];
        assert_eq!(circles(circle.iter()), vec![vec!["a", "b", "c"]]);
    }

    #[test]
    fn paths_in_comments_strings_and_tests_do_not_count() {
        let code = "// crate::x::y\nlet s = \"crate::z\";\n#[cfg(test)]\nmod tests {\n use crate::w;\n}\nuse crate::v;\n";
        let code = strip_tests(&strip_comments_and_strings(code));
        let p: Vec<(usize, String)> = crate_paths(&code)
            .into_iter()
            .map(|(l, p)| (l, p.join("::")))
            .collect();
        assert_eq!(p, [(7, "crate::v".to_string())]);
    }
}
