//! Throwaway network namespaces and bounded subprocesses.
//!
//! [`Netns`] is a guard: [`Netns::create`] makes a namespace with a fresh name
//! `svcpath-<pid>-<n>-<hex>` ([`NETNS_PREFIX`], the creating process id, a per-process counter and a
//! time-derived suffix), and dropping it deletes the namespace (`ip netns del`).
//!
//! Invariants:
//! - svcpath only ever touches namespaces whose name it generated here. Every command either runs
//!   as `ip netns exec NAME …` or is an `ip -n NAME …` call; nothing is run in the caller's
//!   namespace except `ip netns add|del|list` themselves.
//! - Every live namespace is in a process-wide registry. The first [`Netns::create`] installs a
//!   SIGINT/SIGTERM/SIGHUP handler (a `signal-hook` thread) that deletes every registered namespace
//!   and then lets the signal take its default effect, so an interrupted run leaves nothing behind.
//!   Panics unwind through the guards' `Drop`.
//! - [`cleanup_leftovers`] removes only names that match the pattern exactly *and* whose creating
//!   process no longer exists (`/proc/<pid>` is gone), i.e. what a killed (`SIGKILL`) run left.
//! - Every subprocess is waited for with a deadline ([`run_bounded`]) and killed when it passes.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::VerifyError;

/// The prefix of every namespace name svcpath creates.
pub const NETNS_PREFIX: &str = "svcpath-";

/// The `ip` program (iproute2).
pub const IP: &str = "ip";

/// The directory `ip netns` keeps its named namespaces in.
const NETNS_DIR: &str = "/run/netns";

/// How long an `ip` or `iptables-*` administration command may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a bounded wait polls its child.
const POLL: Duration = Duration::from_millis(2);

static COUNTER: AtomicU64 = AtomicU64::new(0);
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SIGNALS: Once = Once::new();

/// A network namespace svcpath created; dropping it deletes the namespace.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a fresh svcpath name and brings its loopback up.
    ///
    /// # Errors
    /// [`VerifyError::Command`] when `ip netns add` fails (not root, no iproute2), or
    /// [`VerifyError::Spawn`] when `ip` cannot be started.
    pub fn create() -> Result<Netns, VerifyError> {
        install_signal_cleanup();
        let name = fresh_name();
        // Register before creating, so a signal arriving in between still removes it.
        register(&name);
        if let Err(e) =
            run_bounded(Command::new(IP).args(["netns", "add", &name]), None, ADMIN_TIMEOUT)
                .and_then(|o| o.check())
        {
            unregister(&name);
            return Err(e);
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (`svcpath-<pid>-<n>-<hex>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS…` (iproute2 acting inside the namespace) and checks its status.
    ///
    /// # Errors
    /// [`VerifyError::Command`] with `ip`'s stderr when it fails, [`VerifyError::Timeout`].
    pub fn ip(&self, args: &[&str]) -> Result<Output, VerifyError> {
        let mut cmd = Command::new(IP);
        cmd.arg("-n").arg(&self.name).args(args);
        run_bounded(&mut cmd, None, ADMIN_TIMEOUT)?.check()
    }

    /// Runs `ip -n NAME -batch -` with `lines` on stdin (many iproute2 commands, one process).
    ///
    /// # Errors
    /// [`VerifyError::Command`] naming the failing batch line, [`VerifyError::Timeout`].
    pub fn ip_batch(&self, lines: &[String]) -> Result<Output, VerifyError> {
        if lines.is_empty() {
            return Ok(Output::default());
        }
        let mut text = lines.join("\n");
        text.push('\n');
        let mut cmd = Command::new(IP);
        cmd.arg("-n").arg(&self.name).args(["-batch", "-"]);
        run_bounded(&mut cmd, Some(text.as_bytes()), ADMIN_TIMEOUT)?.check()
    }

    /// A `Command` for `ip netns exec NAME PROGRAM` (arguments, environment and stdio are the
    /// caller's to add).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(IP);
        cmd.arg("netns").arg("exec").arg(&self.name).arg(program);
        cmd
    }

    /// Runs `PROGRAM ARGS…` inside the namespace with `stdin`, bounded by `timeout`, and returns
    /// its output whatever its exit status.
    ///
    /// # Errors
    /// [`VerifyError::Spawn`], [`VerifyError::Timeout`].
    pub fn exec(
        &self,
        program: impl AsRef<OsStr>,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, VerifyError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_bounded(&mut cmd, stdin, timeout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
        unregister(&self.name);
    }
}

/// What a finished subprocess printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Its exit status (`None` for the empty batch, which runs nothing).
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0 (or nothing ran).
    pub fn success(&self) -> bool {
        self.status.is_none_or(|s| s.success())
    }

    /// `self` when it succeeded, otherwise [`VerifyError::Command`] with its stderr.
    ///
    /// # Errors
    /// [`VerifyError::Command`] on a non-zero exit.
    pub fn check(self) -> Result<Output, VerifyError> {
        if self.success() {
            Ok(self)
        } else {
            Err(VerifyError::Command {
                command: self.command,
                status: self.status.map_or_else(|| "none".to_owned(), |s| s.to_string()),
                stderr: self.stderr.trim().to_owned(),
            })
        }
    }
}

/// Renders a command line for messages (`ip netns exec … iptables-nft-restore`).
pub fn command_line(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        out.push(' ');
        out.push_str(&a.to_string_lossy());
    }
    out
}

/// Runs `cmd` with `stdin` fed in, capturing stdout and stderr, and kills it after `timeout`.
///
/// # Errors
/// [`VerifyError::Spawn`] when it cannot start, [`VerifyError::Timeout`] when it overran (it is
/// killed and reaped first).
pub fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, VerifyError> {
    let command = command_line(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child =
        cmd.spawn().map_err(|source| VerifyError::Spawn { command: command.clone(), source })?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            // A child that exits early closes the pipe; the write error is then irrelevant.
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let out_reader = child.stdout.take().map(spawn_reader);
    let err_reader = child.stderr.take().map(spawn_reader);
    let status = wait_deadline(&mut child, timeout);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.map(join_reader).unwrap_or_default();
    let stderr = err_reader.map(join_reader).unwrap_or_default();
    match status {
        Some(status) => Ok(Output { command, status: Some(status), stdout, stderr }),
        None => Err(VerifyError::Timeout { command, timeout }),
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_reader(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

/// Waits for `child` until `timeout`; on overrun kills and reaps it and returns `None`.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn fresh_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // Only uniqueness matters here (not reproducibility): mix the clock with the counter.
    let mix = (nanos as u64) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{NETNS_PREFIX}{}-{n}-{:06x}", std::process::id(), mix & 0xff_ffff)
}

/// Splits a svcpath namespace name into (creating pid, counter); `None` for any other name.
pub fn parse_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse::<u32>().ok()?;
    let n = parts.next()?.parse::<u64>().ok()?;
    let hex = parts.next()?;
    let hex_ok = hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_ok && parts.next().is_none()).then_some((pid, n))
}

fn register(name: &str) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(name.to_owned());
    }
}

fn unregister(name: &str) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|n| n != name);
    }
}

fn delete_netns(name: &str) {
    let _ = run_bounded(Command::new(IP).args(["netns", "del", name]), None, ADMIN_TIMEOUT);
}

/// The names of the namespaces this process currently holds.
pub fn live_namespaces() -> Vec<String> {
    LIVE.lock().map(|l| l.clone()).unwrap_or_default()
}

fn install_signal_cleanup() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    SIGNALS.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        let _ =
            std::thread::Builder::new().name("svcpath-netns-cleanup".to_owned()).spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let names = live_namespaces();
                    for name in &names {
                        delete_netns(name);
                    }
                    // Let the signal do what it would have done (terminate with its status).
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            });
    });
}

/// Lists the named namespaces (`/run/netns`), sorted.
pub fn list_namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes namespaces left by svcpath runs that died (name matches `svcpath-<pid>-<n>-<hex>`
/// and `<pid>` is no longer running); returns the names removed. Namespaces of live svcpath
/// processes and every other namespace are left alone.
///
/// # Errors
/// [`VerifyError::Command`] when `ip netns del` fails for one of them.
pub fn cleanup_leftovers() -> Result<Vec<String>, VerifyError> {
    let mut removed = Vec::new();
    for name in list_namespaces() {
        let Some((pid, _)) = parse_name(&name) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        run_bounded(Command::new(IP).args(["netns", "del", &name]), None, ADMIN_TIMEOUT)?
            .check()?;
        removed.push(name);
    }
    Ok(removed)
}

/// Finds `program` in `PATH` or the usual sbin directories (which a non-root `PATH` may lack).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The effective uid of this process, read from `/proc/self/status` (`None` if unreadable).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_parse_back_with_our_pid() {
        let a = fresh_name();
        let b = fresh_name();
        assert_ne!(a, b);
        let (pid, _) = parse_name(&a).expect("own name parses");
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn parse_name_rejects_foreign_names() {
        assert_eq!(parse_name("svcpath-12-3-00ab0f"), Some((12, 3)));
        for foreign in [
            "cni-1234",
            "svcpath-12-3",
            "svcpath-12-3-00ab0f-x",
            "svcpath-x-3-00ab0f",
            "svcpath-12-3-zzzzzz",
            "svcpathx-12-3-00ab0f",
        ] {
            assert_eq!(parse_name(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn run_bounded_kills_overrunning_child() {
        let started = Instant::now();
        let err = run_bounded(Command::new("sleep").arg("5"), None, Duration::from_millis(100))
            .expect_err("sleep 5 must time out");
        assert!(matches!(err, VerifyError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn run_bounded_feeds_stdin_and_captures_stdout() {
        let out = run_bounded(&mut Command::new("cat"), Some(b"hello\n"), ADMIN_TIMEOUT).unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "hello\n");
    }

    #[test]
    fn netns_is_deleted_on_drop() {
        if !super::super::tests::have_root("netns_is_deleted_on_drop") {
            return;
        }
        let ns = Netns::create().unwrap();
        let name = ns.name().to_owned();
        assert!(list_namespaces().contains(&name));
        let out = ns.exec("ip", &["-o", "link", "show", "lo"], None, ADMIN_TIMEOUT).unwrap();
        assert!(out.stdout.contains("UP"), "{}", out.stdout);
        drop(ns);
        assert!(!list_namespaces().contains(&name));
        assert!(!live_namespaces().contains(&name));
    }

    const HOLD_ENV: &str = "SVCPATH_TEST_HOLD_NETNS";

    /// Not a test: with `SVCPATH_TEST_HOLD_NETNS` set, creates a namespace, prints its name and
    /// sleeps, so that a parent test can signal this process. Without the variable it does nothing.
    #[test]
    fn hold_netns_entry() {
        if std::env::var_os(HOLD_ENV).is_none() {
            return;
        }
        let ns = Netns::create().expect("create");
        println!("\n@netns {}", ns.name());
        std::thread::sleep(Duration::from_secs(20));
        std::process::exit(0);
    }

    /// Runs [`hold_netns_entry`] in a child, returns it and the namespace it made.
    fn spawn_holder() -> (Child, String) {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["verify::netns::tests::hold_netns_entry", "--exact", "--nocapture"])
            .env(HOLD_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut name = None;
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("@netns ") {
                name = Some(n.trim().to_owned());
                break;
            }
        }
        let name = name.expect("the holder printed its namespace");
        assert!(list_namespaces().contains(&name));
        (child, name)
    }

    #[test]
    fn sigterm_and_sigint_remove_namespaces() {
        if !super::super::tests::have_root("sigterm_and_sigint_remove_namespaces") {
            return;
        }
        for sig in ["TERM", "INT"] {
            let (mut child, name) = spawn_holder();
            // Our own child, by its pid.
            let pid = child.id().to_string();
            run_bounded(Command::new("kill").args(["-s", sig, &pid]), None, ADMIN_TIMEOUT).unwrap();
            let status = wait_deadline(&mut child, Duration::from_secs(10)).expect("holder exits");
            assert!(!status.success(), "SIG{sig} ends the holder with a failure status");
            assert!(!list_namespaces().contains(&name), "SIG{sig} left {name}");
        }
    }

    #[test]
    fn cleanup_leftovers_removes_only_dead_owners() {
        if !super::super::tests::have_root("cleanup_leftovers_removes_only_dead_owners") {
            return;
        }
        // A killed run: SIGKILL cannot be caught, so its namespace stays until cleanup.
        let (mut child, dead) = spawn_holder();
        let _ = child.kill();
        let _ = child.wait();
        assert!(list_namespaces().contains(&dead));
        let alive = Netns::create().unwrap();
        let removed = cleanup_leftovers().unwrap();
        assert!(removed.contains(&dead), "{removed:?}");
        assert!(!list_namespaces().contains(&dead));
        assert!(
            list_namespaces().contains(&alive.name().to_owned()),
            "a live run's namespace is kept"
        );
    }
}
