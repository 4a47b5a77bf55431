//! The layering of `hfm-node`, checked over its sources: the `pub mod` declarations of `src/lib.rs`
//! are the layers, bottom first, and the code of each layer names only layers declared before it
//! (`crate::…` paths outside comments and test code). A new module has to be placed in that list,
//! and an import that points up fails here with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The top-level modules in the order `lib.rs` declares them.
fn layers(source: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(source.join("lib.rs")).expect("reading src/lib.rs");
    lib.lines().filter_map(|line| line.trim().strip_prefix("pub mod ").and_then(|rest| rest.strip_suffix(';')).map(str::to_owned)).collect()
}

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("reading a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// The layer a source file belongs to: its first component under `src/` (`edge/api.rs` → `edge`).
fn layer_of(source: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(source).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The lines of `text` that are code outside tests: comments, `#[cfg(test)]` items (a `mod x;`
/// line or a braced block) and files that are test modules are left out. Returns (line number, line).
fn production_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut skipping_depth: Option<i64> = None;
    let mut pending_test_item = false;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split("//").next().unwrap_or_default();
        let trimmed = line.trim();
        if let Some(depth) = skipping_depth.as_mut() {
            *depth += braces(line);
            if *depth <= 0 {
                skipping_depth = None;
            }
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") || trimmed.starts_with("#[cfg(any(test") {
            pending_test_item = true;
            continue;
        }
        if pending_test_item {
            if trimmed.is_empty() || trimmed.starts_with("#[") {
                continue;
            }
            pending_test_item = false;
            let depth = braces(line);
            if depth > 0 {
                skipping_depth = Some(depth);
            }
            continue;
        }
        lines.push((index + 1, line.to_owned()));
    }
    lines
}

/// Opening minus closing braces on a line, outside string and char literals (good enough for this
/// code base: no braces hide in raw strings that open a test module).
fn braces(line: &str) -> i64 {
    let mut depth = 0;
    let mut in_string = false;
    let mut previous = '\0';
    for character in line.chars() {
        match character {
            '"' if previous != '\\' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => depth -= 1,
            _ => {}
        }
        previous = character;
    }
    depth
}

/// Every `crate::NAME` a line names.
fn crate_references(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(position) = rest.find("crate::") {
        let before = rest[..position].chars().last();
        let after = &rest[position + "crate::".len()..];
        let name: String = after.chars().take_while(|character| character.is_ascii_alphanumeric() || *character == '_').collect();
        // `hfm_cluster::…` and the like end in "crate::" only by accident of spelling; a real path
        // starts the word.
        if !before.is_some_and(|character| character.is_ascii_alphanumeric() || character == '_') && !name.is_empty() {
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = layers(&source);
    assert!(order.len() >= 10, "src/lib.rs should declare the layers as `pub mod` lines: {order:?}");
    let rank: BTreeMap<&str, usize> = order.iter().enumerate().map(|(index, name)| (name.as_str(), index)).collect();
    let mut files = Vec::new();
    rust_files(&source, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(layer) = layer_of(&source, file) else { continue };
        if layer == "lib" || file.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        // The binary sits above every layer.
        let own_rank = if layer == "main" {
            usize::MAX
        } else {
            *rank
                .get(layer.as_str())
                .unwrap_or_else(|| panic!("{} is in no layer: declare `pub mod {layer};` in src/lib.rs", file.display()))
        };
        let text = std::fs::read_to_string(file).expect("reading a source file");
        for (number, line) in production_lines(&text) {
            for name in crate_references(&line) {
                let Some(&target) = rank.get(name.as_str()) else { continue };
                if name != layer && target >= own_rank {
                    violations.push(format!("{}:{number}: layer `{layer}` names `crate::{name}`, a layer above it", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports that point up:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_test_code_and_comments_as_such() {
    let text = "use crate::edge::X;\n// crate::serve\n#[cfg(test)]\nmod tests {\n    use crate::serve::Y;\n    fn f() { let s = \"}\"; }\n}\nfn g() { crate::cli::run(); }\n#[cfg(test)]\nmod other;\nuse hfm_cluster::x;\n";
    let names: Vec<String> = production_lines(text).iter().flat_map(|(_, line)| crate_references(line)).collect();
    assert_eq!(names, ["edge", "cli"]);
}
