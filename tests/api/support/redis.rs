//! A real `redis-server` for tests: one shared by the whole test binary, or a private one
//! that a test may kill and restart.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    port: u16,
}

/// The server shared by every test of this binary; it is never dropped, so a watchdog
/// (see `start_on`) stops it when the test process exits.
pub fn shared() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

impl RedisServer {
    /// A private server on a free loopback port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A server on `port`, answering PING before this returns.
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// A private server that keeps its data in `dir` (AOF, fsync on every write), so a
    /// server started again there after a kill has everything acknowledged before it.
    pub fn start_persistent(dir: &Path) -> Self {
        Self::start_with(free_port(), Some(dir))
    }

    pub fn start_persistent_on(port: u16, dir: &Path) -> Self {
        Self::start_with(port, Some(dir))
    }

    fn start_with(port: u16, data_dir: Option<&Path>) -> Self {
        let persistence: Vec<String> = match data_dir {
            Some(dir) => vec![
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
                "--dir".into(),
                dir.display().to_string(),
            ],
            None => vec!["--appendonly".into(), "no".into()],
        };
        let mut args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(persistence);
        Self::start_args(port, &args)
    }

    /// `redis-server ARGS` (they must make it listen on 127.0.0.1:`port`), answering PING
    /// before this returns; a Sentinel too (`CONFIG_FILE --sentinel ...`).
    pub fn start_args(port: u16, args: &[String]) -> Self {
        let binary = redis_server_binary();
        // `exec` keeps the shell's pid for redis-server, so `kill` below and `Drop` reach it;
        // the background loop kills it once the test process is gone (statics never drop).
        let script = r#"
            test_pid=$1; shift
            (while kill -0 $$ 2>/dev/null; do
                kill -0 "$test_pid" 2>/dev/null || { kill -9 $$; exit; }
                sleep 1
            done) &
            exec "$@"
        "#;
        let child = Command::new("sh")
            .args(["-c", script, "sh", &std::process::id().to_string()])
            .arg(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh to start redis-server");
        let mut server = Self { child, port };
        server.wait_until_ready();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stalls the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Ends a `pause` (SIGCONT): what was sent meanwhile runs now.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Holds every client's writes for `ms` (`CLIENT PAUSE ... WRITE`): they run in the
    /// order they came once the pause ends.
    pub fn pause_writes(&self, ms: u64) {
        let status = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &self.port.to_string(),
                "CLIENT",
                "PAUSE",
                &ms.to_string(),
                "WRITE",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run redis-cli");
        assert!(status.success(), "CLIENT PAUSE");
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} redis-server");
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "redis-server on port {} exited at start ({status}): is the port taken?",
                    self.port
                );
            }
            if answers_ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        panic!("redis-server on port {} did not answer PING within 10 s", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS...`: what it printed, trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A replication test's data node: loopback, no persistence (a restarted node resyncs from
/// its primary), its own directory under `dir` (a replica's full sync writes an RDB file there).
pub fn data_node_args(port: u16, dir: &Path) -> Vec<String> {
    let dir = dir.join(format!("node-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// `redis-server` from PATH; the Redis tests fail (never skip) without it.
fn redis_server_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("redis-server is not installed: the Redis store tests need a real one; run them with scripts/test")
        })
}
