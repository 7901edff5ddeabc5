//! The layout's rule, held: `src/` is in layers, and a module imports only from its own
//! layer and the ones before it (the crate doc lists them); no source file is much over
//! 600 lines without saying why at its top (nor any over 700).

use std::path::{Path, PathBuf};

/// The layers, from the bottom: the first path component under `src/` (a file or folder).
const LAYERS: [&str; 9] = [
    "text",
    "redis",
    "config",
    "celery",
    "verdict",
    "notify",
    "check",
    "telemetry",
    "serve",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn layer_of(src: &Path, file: &Path) -> Option<usize> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    LAYERS.iter().position(|l| *l == name)
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(own) = layer_of(&src, file) else {
            // lib.rs and main.rs assemble everything; any other file must be in a layer,
            // or this test would pass without reading it.
            let name = file.strip_prefix(&src).unwrap();
            assert!(
                name == Path::new("lib.rs") || name == Path::new("main.rs"),
                "{} is in no layer: add it to LAYERS",
                name.display()
            );
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(theirs) = LAYERS.iter().position(|l| *l == name)
                    && theirs > own
                {
                    wrong.push(format!(
                        "{}:{}: {} imports {}",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        LAYERS[own],
                        name
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports of a layer above: {wrong:#?}");
}

#[test]
fn no_long_file_without_a_reason() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut long = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        let head: String = text.lines().take_while(|l| l.starts_with("//!")).collect();
        if lines > 700 || (lines > 600 && !head.contains("lines")) {
            long.push(format!("{}: {lines} lines", file.display()));
        }
    }
    assert!(long.is_empty(), "{long:#?}");
}
