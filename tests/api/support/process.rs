//! The real `vidgate` binary as child processes (gateways, the mock upstream): started,
//! their announced address read, their output drained, killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_vidgate");

/// A child process killed when the test ends, however it ends.
pub struct Process(Child);

impl Process {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, and waits for the process to finish what it holds and exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `vidgate <args>` (logs at `RUST_LOG=log_level`, stderr appended to `log` if
/// given) and returns it with the address of its `listening on` line; the rest of its
/// stdout is drained so it never blocks on a full pipe.
pub fn spawn_logged(args: &[&str], log_level: &str, log: Option<&Path>) -> (Process, String) {
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the log file"),
        ),
        None => Stdio::null(),
    };
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", log_level);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIDGATE_")) {
        command.env_remove(key);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn vidgate");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{args:?} did not announce its address: {first:?}"))
        .to_string();
    std::thread::spawn(move || std::io::copy(&mut stdout.take(u64::MAX), &mut std::io::sink()));
    (Process(child), addr)
}

/// `spawn_logged` with warnings only, to nowhere.
pub fn spawn(args: &[&str]) -> (Process, String) {
    spawn_logged(args, "warn", None)
}

/// A free loopback port (for a gateway whose own URL must be known before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `spawn` with extra environment variables (credentials an operator would set).
pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> (Process, String) {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", "warn").envs(env.iter().copied());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIDGATE_") || k.starts_with("AWS_")) {
        if !env.iter().any(|(name, _)| *name == key) {
            command.env_remove(key);
        }
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vidgate");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{args:?} did not announce its address: {first:?}"))
        .to_string();
    std::thread::spawn(move || std::io::copy(&mut stdout.take(u64::MAX), &mut std::io::sink()));
    (Process(child), addr)
}
