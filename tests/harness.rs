//! Shared helpers: running the binary, temporary files, the kube-proxy test-data tree.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The `svcpath` binary under test.
pub fn svcpath() -> Command {
    Command::cargo_bin("svcpath").expect("the svcpath binary builds")
}

/// Runs the binary with `args`, asserts success, and returns its standard output.
pub fn stdout_of(args: &[&str]) -> String {
    let out = svcpath().args(args).assert().success().get_output().stdout.clone();
    String::from_utf8(out).expect("svcpath prints UTF-8")
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `tests/data`.
pub fn data(rel: &str) -> PathBuf {
    root().join("tests/data").join(rel)
}

/// A temporary directory with `files` written into it.
pub fn temp_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write temp file");
    }
    dir
}

/// Every directory under `dir` (recursively, itself included) that holds `file`.
pub fn dirs_with(dir: &Path, file: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.join(file).exists() {
            out.push(d.clone());
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}
