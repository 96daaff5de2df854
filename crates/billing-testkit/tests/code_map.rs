//! Tidy tests, as rust-analyzer keeps them: checks on the repository's own
//! text rather than on the service. Neither needs a database.
//!
//! - ARCHITECTURE.md's code map names every source file. Each crate has one
//!   bullet in the "## Code map" section, starting with `` `crates/<crate>` ``,
//!   and that bullet names, in backticks, every file under the crate's
//!   `src/` by its path relative to `src/` (`writer/fast.rs`, `auth/jwks.rs`,
//!   `lib.rs`, `main.rs`), a `mod.rs` either so (`auth/mod.rs`) or by its
//!   directory (`admin/`), and `build.rs` as `build.rs`. A crate with a
//!   `tests/` directory names `tests/` in its bullet too (what its tests
//!   cover; the files in it need not be named one by one).
//! - Every relative link in README.md, ARCHITECTURE.md, BENCHMARKS.md and
//!   docs/*.md points to a file or directory that exists.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root: this crate lives in `crates/billing-testkit`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, as paths relative to `dir` with `/`
/// separators, sorted.
fn rust_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let rel = path.strip_prefix(base).expect("under its base");
                let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The names a file may go by in the code map (without backticks): its path
/// relative to `src/`, and for a `mod.rs` its directory too.
fn accepted_names(rel: &str) -> Vec<String> {
    let mut names = vec![rel.to_owned()];
    if let Some(dir) = rel.strip_suffix("/mod.rs") {
        names.push(format!("{dir}/"));
    }
    names
}

/// The "## Code map" section's bullets, each as one string (a bullet runs
/// from its `- ` line to the next one).
fn code_map_bullets(architecture: &str) -> Vec<String> {
    let start = architecture
        .find("\n## Code map\n")
        .expect("ARCHITECTURE.md has a \"## Code map\" section");
    let section = &architecture[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut bullets: Vec<String> = Vec::new();
    for line in section[..end].lines() {
        if let Some(rest) = line.strip_prefix("- ") {
            bullets.push(rest.to_owned());
        } else if let Some(last) = bullets.last_mut() {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    bullets
}

#[test]
fn the_code_map_names_every_source_file() {
    let root = root();
    let bullets = code_map_bullets(&read(&root.join("ARCHITECTURE.md")));
    let mut crates: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("crates/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    assert!(!crates.is_empty(), "no crates under {}", root.display());

    let mut missing = Vec::new();
    for dir in &crates {
        let name = dir.file_name().expect("a name").to_string_lossy();
        let heading = format!("`crates/{name}`");
        let bullet = bullets.iter().find(|b| b.starts_with(&heading));
        let mentions = |n: &str| bullet.is_some_and(|b| b.contains(&format!("`{n}`")));

        let mut files: Vec<(String, Vec<String>)> = rust_files(&dir.join("src"))
            .into_iter()
            .map(|rel| {
                let names = accepted_names(&rel);
                (format!("crates/{name}/src/{rel}"), names)
            })
            .collect();
        if dir.join("build.rs").is_file() {
            files.push((format!("crates/{name}/build.rs"), vec!["build.rs".into()]));
        }
        if dir.join("tests").is_dir() {
            files.push((format!("crates/{name}/tests/"), vec!["tests/".into()]));
        }
        for (path, names) in files {
            if !names.iter().any(|n| mentions(n)) {
                let as_written = names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                let place = if bullet.is_some() {
                    format!("the bullet starting {heading}")
                } else {
                    format!("a new bullet starting {heading} (there is none)")
                };
                missing.push(format!("  {path}: name it as {as_written} in {place}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's \"## Code map\" does not name {} source file(s). Add each to its \
         crate's bullet, in backticks, with a few words from the file's header comment \
         (what it is for), in the bullet's prose:\n{}",
        missing.len(),
        missing.join("\n"),
    );
}

/// The targets of the Markdown links in `text` (`[text](target)` and
/// `[label]: target`), outside code blocks and inline code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Drop inline code: every other backtick-separated piece.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
        if let Some(def) = prose.trim_start().strip_prefix('[')
            && let Some((_, target)) = def.split_once("]:")
            && let Some(target) = target.split_whitespace().next()
        {
            targets.push(target.to_owned());
        }
    }
    targets
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = root();
    let mut pages: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"]
        .iter()
        .map(|p| root.join(p))
        .filter(|p| p.is_file())
        .collect();
    if let Ok(entries) = fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> = entries
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "md"))
            .collect();
        docs.sort();
        pages.extend(docs);
    }

    let mut broken = Vec::new();
    for page in &pages {
        let dir = page.parent().expect("a page is in a directory");
        for target in link_targets(&read(page)) {
            let external = ["http://", "https://", "mailto:", "#"]
                .iter()
                .any(|scheme| target.starts_with(scheme));
            if external || target.is_empty() {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            if !dir.join(file).exists() {
                let shown = page.strip_prefix(&root).unwrap_or(page);
                broken.push(format!("  {}: ({target})", shown.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} relative link(s) point to no file; fix the path (relative to the page) or the \
         link:\n{}",
        broken.len(),
        broken.join("\n"),
    );
}
