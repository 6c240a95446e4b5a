//! The shape of `outbox-core`: its top-level modules import one another without a circle, so
//! that each can be read, tested and changed knowing only those below it. Read from the source:
//! every `crate::…` path a file names (in `use` lines and inline), and the crate root's
//! re-exports (`crate::Outbox` is the `outbox` module's). A failure lists each circle with the
//! files that close it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn source_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// The code of a file without its comments (doc links name modules without importing them).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers a `use` tree names at its top: `{a, b::c, d}` → a, b, d.
fn tree_heads(tree: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut start = true;
    let mut word = String::new();
    for c in tree.chars() {
        match c {
            '{' => {
                depth += 1;
                start = depth == 1;
            }
            '}' => depth -= 1,
            ',' if depth == 1 => start = true,
            c if c.is_alphanumeric() || c == '_' => {
                if start && depth == 1 {
                    word.push(c);
                }
            }
            _ => {
                if !word.is_empty() {
                    heads.push(std::mem::take(&mut word));
                    start = false;
                }
            }
        }
    }
    heads
}

/// What each `crate::X` in `code` points at: a module, or a re-exported name.
fn targets(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(tree) = rest.strip_prefix('{') {
            let end = tree.find('}').map_or(tree.len(), |end| end + 1);
            found.extend(tree_heads(&format!("{{{}", &tree[..end.min(tree.len())])));
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn outbox_core_imports_downward_only_and_in_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../outbox-core/src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    // `pub use module::{A, B};` at the root: A and B belong to `module`.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for line in code(&lib).lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim_end_matches(';');
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            owner.insert(name.trim().to_owned(), module.to_owned());
        }
    }
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" {
            continue;
        }
        let text = code(&std::fs::read_to_string(file).unwrap());
        for target in targets(&text) {
            let target = owner.get(&target).cloned().unwrap_or(target);
            let is_module = src.join(format!("{target}.rs")).exists() || src.join(&target).is_dir();
            if target != module && is_module {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    assert!(edges.len() > 5, "the walk found too little: {edges:?}");
    // Circles: modules that reach themselves.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(module) = todo.pop() {
            for next in edges.get(&module).into_iter().flat_map(|e| e.keys()) {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut circles = Vec::new();
    for (module, targets) in &edges {
        for (target, files) in targets {
            if reach(target).contains(module) {
                circles.push(format!("{module} -> {target} (in {files:?})"));
            }
        }
    }
    // Layers: the table in lib.rs's documentation.
    let mut layer: BTreeMap<String, usize> = BTreeMap::new();
    for line in lib.lines() {
        let cells: Vec<&str> = line
            .trim_start_matches("//!")
            .split('|')
            .map(str::trim)
            .collect();
        if let [_, number, modules, ..] = cells[..]
            && let Ok(number) = number.parse::<usize>()
        {
            for module in modules.split(',') {
                layer.insert(module.trim().to_owned(), number);
            }
        }
    }
    let modules: BTreeSet<&String> = edges
        .iter()
        .flat_map(|(module, targets)| std::iter::once(module).chain(targets.keys()))
        .collect();
    let unplaced: Vec<&&String> = modules
        .iter()
        .filter(|m| !layer.contains_key(**m))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from lib.rs's layer table: {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (module, targets) in &edges {
        for (target, files) in targets {
            if layer[target] > layer[module] {
                upward.push(format!(
                    "{module} (layer {}) -> {target} (layer {}) (in {files:?})",
                    layer[module], layer[target]
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports of a higher layer:\n{}",
        upward.join("\n")
    );
    assert!(
        circles.is_empty(),
        "imports that close a circle between outbox-core's modules (each module may import only \
         those below it):\n{}",
        circles.join("\n")
    );
}
