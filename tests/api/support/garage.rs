//! A real S3-compatible server for the archive tests: Garage, one node on loopback
//! (replication factor 1, sqlite metadata), started once per test binary, with one bucket and
//! one access key, stopped by PID when the test process ends.
//!
//! The binary comes from `GARAGE_BIN` (scripts/test builds it once with `cargo install garage
//! --locked` into a cache outside the checkout) or `garage` on PATH; without it the S3 tests
//! fail, naming what is missing: they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "vidgate-archive";
pub const REGION: &str = "garage";

pub struct Garage {
    child: Child,
    config: PathBuf,
    pub s3_port: u16,
    pub key_id: String,
    pub secret: String,
    _dir: tempfile::TempDir,
}

/// The server shared by every test of this binary (a watchdog stops it when the test process
/// exits, since statics never drop).
pub fn shared() -> &'static Garage {
    static SHARED: OnceLock<Garage> = OnceLock::new();
    SHARED.get_or_init(Garage::start)
}

impl Garage {
    fn start() -> Self {
        let binary = garage_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
                root = dir.path().display()
            ),
        )
        .expect("write garage.toml");
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("garage log");
        // `exec` keeps the shell's pid for garage; the loop kills it once the test process is gone.
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
            .arg(&binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sh to start garage");
        let mut garage = Self {
            child,
            config,
            s3_port,
            key_id: String::new(),
            secret: String::new(),
            _dir: dir,
        };
        garage.set_up(&binary);
        garage
    }

    /// One node in the layout, a bucket, and a key that may read and write it.
    fn set_up(&mut self, binary: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.run(binary, &["status"]).status.success() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "garage exited at start ({status}); see its log in {:?}",
                    self.config.parent()
                );
            }
            assert!(Instant::now() < deadline, "garage did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        let node = String::from_utf8_lossy(&self.check(binary, &["node", "id", "-q"]).stdout).to_string();
        let node = node.trim().split('@').next().unwrap_or_default().to_string();
        self.check(binary, &["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        self.check(binary, &["layout", "apply", "--version", "1"]);
        self.check(binary, &["bucket", "create", BUCKET]);
        let key = self.check(binary, &["json-api", "CreateKey", r#"{"name":"vidgate-tests"}"#]);
        let key: serde_json::Value = serde_json::from_slice(&key.stdout).expect("CreateKey answers JSON");
        self.key_id = key["accessKeyId"].as_str().expect("accessKeyId").to_string();
        self.secret = key["secretAccessKey"].as_str().expect("secretAccessKey").to_string();
        let key_id = self.key_id.clone();
        self.check(
            binary,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key_id,
            ],
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn run(&self, binary: &Path, args: &[&str]) -> Output {
        Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run garage")
    }

    fn check(&self, binary: &Path, args: &[&str]) -> Output {
        let output = self.run(binary, args);
        assert!(
            output.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GARAGE_BIN`, else `garage` on PATH; the S3 archive tests fail (never skip) without it.
fn garage_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GARAGE_BIN").map(PathBuf::from) {
        assert!(path.is_file(), "GARAGE_BIN={path:?} is not a file");
        return path;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("garage"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "garage is not installed: the S3 archive tests need a real S3-compatible server; run them with \
                 scripts/test (it builds garage once) or set GARAGE_BIN"
            )
        })
}
