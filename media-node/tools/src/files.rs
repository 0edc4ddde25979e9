//! What a node left on disk (spool, recordings root), looked at from outside.

use std::path::{Path, PathBuf};

/// Every file under `dir`, at any depth, whose path ends with `suffix` (all files for
/// ""); none when `dir` does not exist.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}
