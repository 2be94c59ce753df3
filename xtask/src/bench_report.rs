//! `docs/benchmarks.md`: one generated section per benchmark, between `begin`/`end` markers,
//! each rewritten only by its own benchmark; everything outside the markers (the title,
//! hand-written notes) is kept as it is.

use std::{fs, path::Path};

use anyhow::{Context, Result};

/// The report every benchmark writes its section into.
pub const REPORT_FILE: &str = "docs/benchmarks.md";

const TITLE: &str = "# Benchmarks\n\n\
    Each section between a `begin` and an `end` marker is written by its benchmark (`cargo \
    xtask bench <name>`), which replaces it on every run; edit the benchmark, not the section. \
    Everything outside the markers is hand-written and kept.\n";

fn begin_marker(name: &str) -> String {
    format!(
        "<!-- begin {name} benchmark: written by `cargo xtask bench {name}`, edit that, not this -->"
    )
}

fn end_marker(name: &str) -> String {
    format!("<!-- end {name} benchmark -->")
}

/// Replaces benchmark `name`'s section of `path` with `markdown` (a `## …` heading and what
/// follows), or appends the section when the file has none yet.
pub fn write_section(path: &Path, name: &str, markdown: &str) -> Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TITLE.to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = replace_section(&old, name, markdown);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn replace_section(old: &str, name: &str, markdown: &str) -> String {
    let section = format!(
        "{}\n\n{}\n\n{}\n",
        begin_marker(name),
        markdown.trim(),
        end_marker(name)
    );
    // Only the marker's fixed start: older runs may have worded the rest differently.
    let begin_prefix = format!("<!-- begin {name} benchmark");
    let end = end_marker(name);
    if let Some(start) = old.find(&begin_prefix) {
        if let Some(end_at) = old[start..].find(&end) {
            let mut after = &old[start + end_at + end.len()..];
            after = after.strip_prefix('\n').unwrap_or(after);
            return format!("{}{section}{after}", &old[..start]);
        }
    }
    let mut text = old.trim_end().to_owned();
    text.push_str("\n\n");
    text.push_str(&section);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_and_everything_else_kept() {
        let old = format!(
            "# Benchmarks\n\nintro\n\n{}\n\n## Plugin\n\nold numbers\n\n{}\n\n### Notes\n\nkept\n\n{}\n\n## Controller\n\nits numbers\n\n{}\n\ncontroller notes\n",
            begin_marker("plugin"),
            end_marker("plugin"),
            begin_marker("controller"),
            end_marker("controller"),
        );
        let new = replace_section(&old, "plugin", "## Plugin\n\nnew numbers\n");
        assert!(new.contains("new numbers"));
        assert!(!new.contains("old numbers"));
        for kept in [
            "intro",
            "### Notes\n\nkept",
            "its numbers",
            "controller notes",
        ] {
            assert!(new.contains(kept), "{kept:?} lost:\n{new}");
        }
        // Replacing again changes nothing.
        assert_eq!(
            replace_section(&new, "plugin", "## Plugin\n\nnew numbers"),
            new
        );
    }

    #[test]
    fn a_missing_section_is_appended() {
        let new = replace_section(TITLE, "controller", "## Controller\n\nnumbers");
        assert!(new.starts_with("# Benchmarks"));
        assert!(new.ends_with(&format!(
            "{}\n\n## Controller\n\nnumbers\n\n{}\n",
            begin_marker("controller"),
            end_marker("controller")
        )));
    }

    #[test]
    fn a_missing_file_gets_the_title() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs/benchmarks.md");
        write_section(&path, "plugin", "## Plugin\n\nnumbers").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Benchmarks"));
        assert!(text.contains("## Plugin\n\nnumbers"));
    }
}
