//! Architecture: references between the rooms of `src/` (its top-level modules) follow the
//! table of who may call whom (docs/ARCHITECTURE.md), so dependencies point one way.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Who may call whom: each room of `src/` and the rooms it may use. Anything not listed is
/// forbidden; a room may always use its own sub-modules. Shown in docs/ARCHITECTURE.md.
const MAY_USE: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "api",
            "worker",
            "rescuer",
            "outbox",
            "health",
            "queue",
            "cloud",
            "store",
            "image_store",
            "image_files",
            "retry",
            "secrets",
            "config",
            "telemetry",
            "printable",
        ],
    ),
    (
        "api",
        &[
            "maintenance",
            "live",
            "reconciler",
            "outbox",
            "health",
            "queue",
            "cloud",
            "store",
            "image_store",
            "retry",
            "secrets",
            "config",
            "metrics_catalog",
            "printable",
        ],
    ),
    (
        "worker",
        &[
            "maintenance",
            "live",
            "reconciler",
            "outbox",
            "health",
            "queue",
            "cloud",
            "store",
            "image_store",
            "image_files",
            "retry",
            "secrets",
            "config",
            "metrics_catalog",
        ],
    ),
    (
        "maintenance",
        &["rescuer", "reconciler", "outbox", "queue", "config"],
    ),
    ("rescuer", &["outbox", "queue", "store", "metrics_catalog"]),
    (
        "reconciler",
        &[
            "cloud",
            "store",
            "retry",
            "secrets",
            "config",
            "metrics_catalog",
        ],
    ),
    ("live", &["store", "retry", "config"]),
    ("outbox", &["queue", "store"]),
    ("health", &["queue", "store", "metrics_catalog"]),
    ("queue", &["config", "metrics_catalog"]),
    ("cloud", &["secrets", "config", "metrics_catalog"]),
    ("store", &["retry", "secrets", "config"]),
    ("retry", &["config"]),
    ("telemetry", &["config"]),
    ("image_store", &["image_files", "config"]),
    ("image_files", &[]),
    ("config", &["secrets"]),
    ("secrets", &[]),
    ("metrics_catalog", &[]),
    ("printable", &[]),
];

fn may_use(room: &str) -> Option<&'static [&'static str]> {
    MAY_USE
        .iter()
        .find(|(r, _)| *r == room)
        .map(|(_, uses)| *uses)
}

/// One reference from a file to a room: where it is and which room it names.
#[derive(Debug, PartialEq)]
struct Reference {
    line: usize,
    room: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
    PathSep,
}

/// The source with comments, strings and char literals blanked (newlines kept), so that
/// only code is searched and line numbers stay right.
fn code_only(source: &str) -> Vec<char> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = chars.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(chars.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let next = chars.get(i + 1).copied();
        if chars[i] == '/' && next == Some('/') {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            blank(&mut out, i, end);
            i = end;
        } else if chars[i] == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < chars.len() && depth > 0 {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 1;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
        } else if chars[i] == 'r'
            && (i == 0
                || !is_ident(chars[i - 1])
                || (chars[i - 1] == 'b' && (i < 2 || !is_ident(chars[i - 2]))))
            && matches!(next, Some('#') | Some('"'))
            && chars[i + 1..].iter().find(|&&c| c != '#') == Some(&'"')
        {
            let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
            let mut j = i + 2 + hashes;
            while j < chars.len()
                && !(chars[j] == '"'
                    && chars[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes)
            {
                j += 1;
            }
            blank(&mut out, i, j + 1 + hashes);
            i = j + 1 + hashes;
        } else if chars[i] == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if chars[i] == '\'' && next == Some('\\') {
            let end = (i + 3..chars.len())
                .find(|&j| chars[j] == '\'')
                .unwrap_or(chars.len());
            blank(&mut out, i, end + 1);
            i = end + 1;
        } else if chars[i] == '\'' && chars.get(i + 2) == Some(&'\'') {
            blank(&mut out, i, i + 3);
            i += 3;
        } else {
            // A lifetime's quote, or any other code.
            i += 1;
        }
    }
    out
}

fn tokens(code: &[char]) -> Vec<(usize, Token)> {
    let mut found = vec![];
    let (mut i, mut line) = (0, 1);
    while i < code.len() {
        let c = code[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < code.len() && (code[i].is_alphanumeric() || code[i] == '_') {
                i += 1;
            }
            found.push((line, Token::Ident(code[start..i].iter().collect())));
        } else if c == ':' && code.get(i + 1) == Some(&':') {
            found.push((line, Token::PathSep));
            i += 2;
        } else {
            found.push((line, Token::Punct(c)));
            i += 1;
        }
    }
    found
}

/// The module `src/<relative>` defines: `worker/job.rs` is `worker::job`, `lib.rs` the root.
fn module_of(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
        path.pop();
    }
    path
}

/// Every room that code in the module `module` names through `crate::` or `super::`,
/// `{...}` groups included.
fn references(module: &[String], source: &str) -> Vec<Reference> {
    let tokens = tokens(&code_only(source));
    let ident = |i: usize| match tokens.get(i) {
        Some((_, Token::Ident(name))) => Some(name.as_str()),
        _ => None,
    };
    let is = |i: usize, t: Token| tokens.get(i).map(|(_, tk)| tk) == Some(&t);
    let mut found = vec![];
    // Inline modules (`mod tests { ... }`) deepen `super::`: (name, brace depth inside).
    let mut inline: Vec<(String, usize)> = vec![];
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].1 {
            Token::Punct('{') => {
                depth += 1;
                if i >= 2 && ident(i - 2) == Some("mod") {
                    inline.push((ident(i - 1).unwrap_or_default().to_string(), depth));
                }
            }
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        let after_path_sep = i > 0 && is(i - 1, Token::PathSep);
        let base = match ident(i) {
            Some("crate") if !after_path_sep && is(i + 1, Token::PathSep) => {
                i += 2;
                Some(vec![])
            }
            Some("super") if !after_path_sep && is(i + 1, Token::PathSep) => {
                let mut here: Vec<String> = module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(name, _)| name.clone()))
                    .collect();
                while ident(i) == Some("super") && is(i + 1, Token::PathSep) {
                    here.pop();
                    i += 2;
                }
                Some(here)
            }
            _ => None,
        };
        let Some(base) = base else {
            i += 1;
            continue;
        };
        let line = tokens.get(i).map_or(0, |(line, _)| *line);
        if let Some(room) = base.first() {
            found.push(Reference {
                line,
                room: room.clone(),
            });
            continue;
        }
        // At the root: the next name is the room, or each first name of a group.
        if is(i, Token::Punct('{')) {
            let mut nested = 0;
            let mut item_start = true;
            let mut j = i + 1;
            while j < tokens.len() {
                match &tokens[j].1 {
                    Token::Punct('{') => nested += 1,
                    Token::Punct('}') if nested == 0 => break,
                    Token::Punct('}') => nested -= 1,
                    Token::Punct(',') if nested == 0 => {
                        item_start = true;
                        j += 1;
                        continue;
                    }
                    Token::Ident(name) if item_start && name != "self" => found.push(Reference {
                        line: tokens[j].0,
                        room: name.clone(),
                    }),
                    Token::Punct('*') if item_start => found.push(Reference {
                        line: tokens[j].0,
                        room: "*".into(),
                    }),
                    _ => {}
                }
                item_start = false;
                j += 1;
            }
        } else if let Some(name) = ident(i) {
            found.push(Reference {
                line,
                room: name.to_string(),
            });
        } else if is(i, Token::Punct('*')) {
            found.push(Reference {
                line,
                room: "*".into(),
            });
        }
    }
    found
}

/// What `MAY_USE` forbids in one file, as "file:line: room -> room (why)".
fn violations(relative: &Path, source: &str) -> Vec<String> {
    let module = module_of(relative);
    let Some(room) = module.first() else {
        return vec![]; // lib.rs: the module list itself
    };
    let Some(allowed) = may_use(room) else {
        return vec![format!(
            "src/{}: room `{room}` is not in MAY_USE",
            relative.display()
        )];
    };
    references(&module, source)
        .into_iter()
        .filter(|r| r.room != *room && !allowed.contains(&r.room.as_str()))
        .map(|r| {
            let why = if r.room == "*" {
                "a glob over the whole crate".to_string()
            } else if may_use(&r.room).is_none() {
                format!("`{}` is not a room in MAY_USE", r.room)
            } else {
                format!("`{room}` may use only {allowed:?}")
            };
            format!(
                "src/{}:{}: `{room}` uses `{}` ({why})",
                relative.display(),
                r.line,
                r.room
            )
        })
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The rooms `src/lib.rs` declares (`pub mod x;`).
fn declared_rooms() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read src/lib.rs");
    let tokens = tokens(&code_only(&lib));
    tokens
        .windows(3)
        .filter_map(|w| match (&w[0].1, &w[1].1, &w[2].1) {
            (Token::Ident(m), Token::Ident(name), Token::Punct(';')) if m == "mod" => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn every_reference_between_rooms_is_allowed() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    files.sort();
    let mut forbidden = vec![];
    for path in &files {
        let relative = path.strip_prefix(src()).expect("under src/");
        if relative == Path::new("main.rs") {
            continue; // the binary: a crate of its own, above `cli`
        }
        let source = std::fs::read_to_string(path).expect("read source");
        forbidden.extend(violations(relative, &source));
    }
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    assert!(
        forbidden.is_empty(),
        "references the table MAY_USE forbids:\n{}",
        forbidden.join("\n")
    );
}

#[test]
fn the_table_names_every_room_once_and_only_rooms() {
    let listed: Vec<&str> = MAY_USE.iter().map(|(room, _)| *room).collect();
    let unique: BTreeSet<String> = listed.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a room listed twice: {listed:?}"
    );
    assert_eq!(unique, declared_rooms(), "MAY_USE against src/lib.rs");
    for (room, uses) in MAY_USE {
        for used in *uses {
            assert!(may_use(used).is_some(), "{room} may use unknown `{used}`");
            assert_ne!(room, used, "{room} lists itself");
        }
    }
}

#[test]
fn the_table_has_no_cycle() {
    /// Depth-first: `path` is the chain from the start to `room`.
    fn visit(room: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if let Some(at) = path.iter().position(|r| r == room) {
            panic!("cycle: {} -> {room}", path[at..].join(" -> "));
        }
        if done.contains(room) {
            return;
        }
        path.push(room.to_string());
        for used in may_use(room).unwrap_or_default() {
            visit(used, path, done);
        }
        path.pop();
        done.insert(room.to_string());
    }
    let mut done = BTreeSet::new();
    for (room, _) in MAY_USE {
        visit(room, &mut vec![], &mut done);
    }
}

#[test]
fn the_architecture_document_shows_the_table() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md"))
            .expect("read docs/ARCHITECTURE.md");
    let section = doc
        .split("## Who may call whom")
        .nth(1)
        .expect("a section `## Who may call whom`");
    let section = section.split("\n## ").next().unwrap_or(section);
    for (room, uses) in MAY_USE {
        let uses = if uses.is_empty() {
            "nothing".to_string()
        } else {
            uses.iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let row = format!("| `{room}` | {uses} |");
        assert!(
            section.lines().any(|l| l.trim() == row),
            "docs/ARCHITECTURE.md lacks the row\n{row}"
        );
    }
}

/// The scanner itself: each kind of forbidden reference is caught, with its line.
#[test]
fn forbidden_references_are_found_in_every_form() {
    let found = |file: &str, source: &str| violations(Path::new(file), source);
    // A plain path, a group, a nested group, and a path inside an expression.
    let bad = "use crate::config::AmqpSettings;\n\
               use crate::{config, store::tickets};\n\
               use crate::{self, config::{A, B}, worker::Worker};\n\
               fn f() { let _ = crate::api::new_api_key(); }\n";
    let lines = found("queue.rs", bad);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("src/queue.rs:2: `queue` uses `store`"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("src/queue.rs:3: `queue` uses `worker`"),
        "{lines:#?}"
    );
    assert!(
        lines[2].starts_with("src/queue.rs:4: `queue` uses `api`"),
        "{lines:#?}"
    );

    // `super::` that leaves the room, from a room's own file, a sub-module, and a test.
    assert_eq!(
        found("worker/mod.rs", "use super::api::Application;").len(),
        1
    );
    assert_eq!(
        found("cloud/glance.rs", "use super::super::worker::Worker;").len(),
        1
    );
    assert_eq!(
        found("config.rs", "mod tests { use super::super::api::X; }").len(),
        1
    );
    // ...and `super::` that stays in the room.
    assert!(found("cloud/glance.rs", "use super::error::{check, Cause};").is_empty());
    assert!(found(
        "cloud/error.rs",
        "#[cfg(test)]\nmod tests { use super::*; }"
    )
    .is_empty());
    assert!(found("worker/mod.rs", "mod tests { use super::super::store::X; }").is_empty());

    // Comments, doc links, strings and char literals are not code.
    let quiet = "// crate::api\n/// [`crate::worker::Worker`]\n/* crate::api */\n\
                 const S: &str = \"crate::api\"; const R: &str = r#\"crate::api\"#;\n\
                 const C: char = '{'; fn g<'a>(x: &'a str) -> &'a str { x }\n";
    assert!(
        found("config.rs", quiet).is_empty(),
        "{:#?}",
        found("config.rs", quiet)
    );
    // A glob over the crate, an unknown room, and a file outside every room.
    assert_eq!(found("config.rs", "use crate::*;").len(), 1);
    assert!(found("config.rs", "use crate::nowhere::X;")[0].contains("not a room"));
    assert!(found("elsewhere.rs", "")[0].contains("not in MAY_USE"));
}

/// Metrics are named in one place: a metric macro never takes a string literal, and no
/// file but the catalog spells a catalogued name.
#[test]
fn metrics_are_named_only_by_the_catalog() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let mut found = vec![];
    for path in &files {
        if path.ends_with("metrics_catalog.rs") {
            continue;
        }
        let source = std::fs::read_to_string(path).expect("read source");
        for (n, line) in source.lines().enumerate() {
            let literal_name = ["counter!(\"", "gauge!(\"", "histogram!(\""]
                .iter()
                .any(|m| line.contains(m));
            let catalogued = pimage::metrics_catalog::ALL
                .iter()
                .any(|m| line.contains(&format!("\"{}\"", m.name)));
            if literal_name || catalogued {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "metric names spelled outside src/metrics_catalog.rs:\n{}",
        found.join("\n")
    );
}

/// One Postgres listener per process: only `live::listener` names sqlx's `PgListener`
/// (the others subscribe to it), so no LISTEN loop can again use the `recv` that
/// reconnects silently and loses what was announced in the gap.
#[test]
fn only_the_listener_names_pg_listener() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let found: Vec<String> = files
        .iter()
        .filter(|path| !path.ends_with("live/listener.rs"))
        .filter(|path| {
            let source = std::fs::read_to_string(path).expect("read source");
            code_only(&source)
                .into_iter()
                .collect::<String>()
                .contains("PgListener")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        found.is_empty(),
        "`PgListener` outside src/live/listener.rs: {found:?}"
    );
}

/// The map at the top of `src/lib.rs` names every room and every file of a room's folder.
#[test]
fn the_module_map_lists_every_file() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read src/lib.rs");
    let map: Vec<&str> = lib.lines().take_while(|l| l.starts_with("//!")).collect();
    let listed = |name: &str| {
        map.iter()
            .any(|l| l.contains(&format!("[`{name}`]")) || l.contains(&format!("· `{name}`")))
    };
    let mut missing = vec![];
    for entry in std::fs::read_dir(src()).expect("read src/") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if ["lib", "main"].contains(&name) {
            continue;
        }
        if !listed(name) {
            missing.push(name.to_string());
        }
        if path.is_dir() {
            for sub in std::fs::read_dir(&path).expect("read room") {
                let sub = sub.expect("dir entry").path();
                let sub = sub.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
                if sub != "mod" && !listed(sub) {
                    missing.push(format!("{name}/{sub}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "src/lib.rs's map does not list: {missing:?}"
    );
}

/// The longest a function of `src/` may be, from its `fn` line to its closing brace.
const MAX_FUNCTION_LINES: usize = 80;

/// Functions over the limit today (`file: fn`), each to be shortened by its owner; the list
/// may only shrink (a function shortened must leave it). Not counted: the console's HTML
/// templates (`api/console/pages.rs`), and `#[cfg(test)]` modules (tables of cases).
const KNOWN_LONG_FUNCTIONS: &[&str] = &[];

/// The lines each function of `source` spans (`name`, lines), outside `#[cfg(test)]`
/// modules; nested functions count in their own right and in their parent's lines.
fn function_lengths(source: &str) -> Vec<(String, usize)> {
    let tokens = tokens(&code_only(source));
    let punct = |i: usize, c: char| matches!(tokens.get(i), Some((_, Token::Punct(p))) if *p == c);
    let ident = |i: usize, s: &str| matches!(tokens.get(i), Some((_, Token::Ident(x))) if x == s);
    // The index of the `}` closing the `{` at `open`.
    let closing = |open: usize| {
        let mut depth = 0usize;
        (open..tokens.len())
            .find(|&i| {
                if punct(i, '{') {
                    depth += 1;
                } else if punct(i, '}') {
                    depth -= 1;
                }
                depth == 0
            })
            .expect("balanced braces")
    };
    let mut skip_until = 0;
    let mut found = vec![];
    for i in 0..tokens.len() {
        if i < skip_until {
            continue;
        }
        let is_test_module = punct(i, '#')
            && punct(i + 1, '[')
            && ident(i + 2, "cfg")
            && punct(i + 3, '(')
            && ident(i + 4, "test")
            && punct(i + 5, ')')
            && punct(i + 6, ']')
            && ident(i + 7, "mod")
            && punct(i + 9, '{');
        if is_test_module {
            skip_until = closing(i + 9);
            continue;
        }
        let name = match (&tokens[i].1, tokens.get(i + 1)) {
            (Token::Ident(f), Some((_, Token::Ident(name)))) if f == "fn" => name.clone(),
            _ => continue,
        };
        // The body's `{`, unless a `;` ends a declaration first (`[T; N]` is no end).
        let mut nesting = 0i32;
        let body = (i + 2..tokens.len()).find_map(|j| match &tokens[j].1 {
            Token::Punct('(' | '[') => {
                nesting += 1;
                None
            }
            Token::Punct(')' | ']') => {
                nesting -= 1;
                None
            }
            Token::Punct(';') if nesting == 0 => Some(None),
            Token::Punct('{') if nesting == 0 => Some(Some(j)),
            _ => None,
        });
        if let Some(Some(open)) = body {
            let lines = tokens[closing(open)].0 - tokens[i].0 + 1;
            found.push((name, lines));
        }
    }
    found
}

#[test]
fn no_function_in_src_is_longer_than_80_lines_but_the_known_ones() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    files.sort();
    let mut long = BTreeSet::new();
    for path in files {
        let relative = path
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if relative == "api/console/pages.rs" {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for (name, lines) in function_lengths(&source) {
            if lines > MAX_FUNCTION_LINES {
                long.insert(format!("{relative}: {name}"));
                println!("{relative}: {name}: {lines} lines");
            }
        }
    }
    let known: BTreeSet<String> = KNOWN_LONG_FUNCTIONS.iter().map(|s| s.to_string()).collect();
    let new: Vec<_> = long.difference(&known).collect();
    let shortened: Vec<_> = known.difference(&long).collect();
    assert!(
        new.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines (split them): {new:?}"
    );
    assert!(
        shortened.is_empty(),
        "no longer over {MAX_FUNCTION_LINES} lines: remove them from KNOWN_LONG_FUNCTIONS: \
         {shortened:?}"
    );
}

#[test]
fn function_lengths_count_from_fn_to_the_closing_brace() {
    let source = r#"
trait T {
    fn declared(&self) -> [u8; 4];
}
fn outer(f: fn(u8) -> u8) {
    let s = "}{";
    let c = '{';
    fn inner() {}
}
#[cfg(test)]
mod tests {
    fn ignored() {
    }
}
"#;
    assert_eq!(
        function_lengths(source),
        vec![("outer".to_string(), 5), ("inner".to_string(), 1)]
    );
}

/// The sub-modules of `api` (files and folders of `src/api/`) and, for each, the others it
/// names through `super::`: no two depend on each other, directly or around a circle (the
/// OpenAPI document's shared parts are a leaf, `api/doc_parts`, that no handler's
/// annotation has to reach through `api/openapi`).
#[test]
fn api_sub_modules_form_no_cycle() {
    let api = src().join("api");
    let mut files = vec![];
    rust_files(&api, &mut files);
    let mut uses: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for path in &files {
        // Seen from `api`: `super::x` in `api/routes.rs` resolves to the sub-module `x`.
        let module = module_of(path.strip_prefix(&api).expect("under src/api/"));
        let Some(own) = module.first() else {
            continue; // api/mod.rs: the parent, which declares them all
        };
        let source = std::fs::read_to_string(path).expect("read source");
        let named = references(&module, &source).into_iter().map(|r| r.room);
        uses.entry(own.clone()).or_default().extend(named);
    }
    let sub_modules: BTreeSet<String> = uses.keys().cloned().collect();
    assert!(sub_modules.contains("routes") && sub_modules.contains("openapi"));
    fn visit(
        module: &str,
        uses: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|m| m == module) {
            panic!(
                "api sub-modules in a cycle: {} -> {module}",
                path[at..].join(" -> ")
            );
        }
        if done.contains(module) {
            return;
        }
        path.push(module.to_string());
        // Names that are not sub-modules (rooms through `crate::`, items of `api/mod.rs`)
        // have no entry; a module naming itself (`super::*` in its tests) is no edge.
        for used in uses[module]
            .iter()
            .filter(|u| *u != module && uses.contains_key(*u))
        {
            visit(used, uses, path, done);
        }
        path.pop();
        done.insert(module.to_string());
    }
    let mut done = BTreeSet::new();
    for module in &sub_modules {
        visit(module, &uses, &mut vec![], &mut done);
    }
}

/// Path parameters are typed structs (`api/params`), never a map parsed by hand.
#[test]
fn no_path_is_extracted_into_a_hash_map() {
    let mut files = vec![];
    rust_files(&src(), &mut files);
    let mut found = vec![];
    for path in &files {
        let source = std::fs::read_to_string(path).expect("read source");
        let code: String = code_only(&source)
            .into_iter()
            .filter(|c| !c.is_whitespace())
            .collect();
        if code.contains("Path<HashMap") || code.contains("Path<std::collections::HashMap") {
            found.push(path.display().to_string());
        }
    }
    assert!(found.is_empty(), "Path<HashMap…> in: {found:?}");
}
