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

/// One row of an upstream `runPacketFlowTests` table, transcribed in a `flows.json`.
#[derive(Debug, serde::Deserialize)]
pub struct UpstreamFlow {
    pub name: String,
    pub source: std::net::IpAddr,
    pub dest: std::net::IpAddr,
    pub port: u16,
    pub protocol: String,
    /// Endpoints `ip:port` joined by `, `, or `REJECT` / `DROP` / `ACCEPT`, or empty.
    pub output: String,
    pub masq: bool,
}

impl UpstreamFlow {
    /// The flows of `dir/flows.json`.
    pub fn read(dir: &Path) -> Vec<UpstreamFlow> {
        let text = std::fs::read_to_string(dir.join("flows.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
    }

    /// `None` when `got` and `masq` are what upstream expects; else a line saying what differs,
    /// naming `dir` relative to `base`.
    pub fn mismatch(
        &self,
        base: &Path,
        dir: &Path,
        got: &std::collections::BTreeSet<String>,
        masq: bool,
    ) -> Option<String> {
        let want: std::collections::BTreeSet<String> =
            self.output.split(", ").filter(|s| !s.is_empty()).map(str::to_owned).collect();
        (*got != want || masq != self.masq).then(|| {
            format!(
                "{} / {}: {} -> {}:{} {}: expected {:?} masq {}, got {:?} masq {}",
                dir.strip_prefix(base).unwrap_or(dir).display(),
                self.name,
                self.source,
                self.dest,
                self.port,
                self.protocol,
                want,
                self.masq,
                got,
                masq
            )
        })
    }
}

/// Fails listing every mismatch, or when fewer than `min` flows were checked.
pub fn assert_flows_hold(total: usize, min: usize, failures: &[String]) {
    assert!(total >= min, "only {total} flows found");
    assert!(
        failures.is_empty(),
        "{} of {total} flows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Whether `nfacct` is installed, which loading kube-proxy's dumps needs (they count packets with
/// `-m nfacct`, whose objects must exist first); prints a visible skip notice for `test` when not.
pub fn have_nfacct(test: &str) -> bool {
    let found = svcpath::verify::netns::find_program("nfacct").is_some();
    if !found {
        eprintln!("skipped: {test} needs nfacct (kube-proxy's dumps use -m nfacct)");
    }
    found
}
