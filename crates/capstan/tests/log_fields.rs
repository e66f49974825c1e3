//! Every log line about an object spells it the same way: `kind` and `object`
//! (`namespace/name`, or `name` for a cluster-scoped one), never `namespace` and `name`
//! apart, so that one query (`object="shop/web"`) finds every line. Checked on the
//! source of every crate: each `tracing` call that names an object names its kind.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of each `tracing::<level>!(...)` call in `source` (to its closing paren).
fn tracing_calls(source: &str) -> Vec<String> {
    let mut calls = Vec::new();
    for level in ["trace", "debug", "info", "warn", "error"] {
        let open = format!("tracing::{level}!(");
        let mut rest = source;
        while let Some(at) = rest.find(&open) {
            let body = &rest[at + open.len()..];
            let mut depth = 1;
            let mut end = body.len();
            for (i, c) in body.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            calls.push(body[..end].to_owned());
            rest = &body[end..];
        }
    }
    calls
}

#[test]
fn every_object_in_a_log_line_has_one_spelling() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates").flatten() {
        let src = entry.path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "only {} files found", files.len());
    let mut bad = Vec::new();
    let mut objects = 0;
    for file in files {
        let source = std::fs::read_to_string(&file).expect("read");
        for call in tracing_calls(&source) {
            let fields = call.replace(char::is_whitespace, "");
            let names_object = fields.contains("object=") || fields.contains("object,");
            if names_object {
                objects += 1;
            }
            if names_object && !fields.contains("kind") {
                bad.push(format!("{}: object without kind: {call}", file.display()));
            }
            if fields.contains("name=%") && fields.contains("namespace=") {
                bad.push(format!(
                    "{}: namespace and name apart: {call}",
                    file.display()
                ));
            }
        }
    }
    assert!(objects >= 10, "only {objects} log calls name an object");
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
