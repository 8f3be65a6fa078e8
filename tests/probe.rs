//! Reference-video probing against a tiny local HTTP server (loopback only): containers,
//! range reads, servers that ignore Range, chunked and slow answers, redirects, address rules,
//! cache and limits. Internal addresses other than loopback are tested only through the
//! pure classifier: nothing here connects anywhere but 127.0.0.1 / ::1.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vidgate::config::ProbeConfig;
use vidgate::probe::address::AddressPolicy;
use vidgate::probe::boxes::walk_bytes;
use vidgate::probe::fetch::checked_addresses;
use vidgate::probe::{Container, ProbeError, Prober, Resolver, VideoInfo};

// ---------------------------------------------------------------------------------------
// Fixtures

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/video/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// (file, container, duration ms as written by make.sh's ffmpeg, has audio)
const FIXTURES: &[(&str, Container, u64, bool)] = &[
    ("faststart_2s_audio.mp4", Container::Mp4, 2000, true),
    ("moov_end_4_2s.mp4", Container::Mp4, 4200, false),
    ("limit_30s.mp4", Container::Mp4, 30_000, false),
    ("over_31s.mp4", Container::Mp4, 31_000, false),
    ("short_1_5s.mov", Container::Mov, 1500, false),
    ("clip_4_2s_audio.mov", Container::Mov, 4200, true),
    ("fragmented_4_2s.mp4", Container::Mp4, 4200, false),
    ("fragmented_partial_4_2s.mp4", Container::Mp4, 4200, false),
    ("fragmented_mehd_4_2s.mp4", Container::Mp4, 4200, false),
];

/// Grows the `mdat` of a file by `extra` zero bytes (sample offsets go stale, which no
/// duration depends on): a realistic "moov after a big mdat" layout from a tiny fixture.
fn with_big_mdat(file: &[u8], extra: usize) -> Vec<u8> {
    let mut pos = 0;
    while pos + 8 <= file.len() {
        let size = u32::from_be_bytes(file[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        if &file[pos + 4..pos + 8] == b"mdat" {
            let mut out = file[..pos + size].to_vec();
            out.extend(std::iter::repeat_n(0, extra));
            out.extend_from_slice(&file[pos + size..]);
            let grown = u32::try_from(size + extra).expect("fits");
            out[pos..pos + 4].copy_from_slice(&grown.to_be_bytes());
            return out;
        }
        pos += size;
    }
    panic!("no mdat");
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server on loopback

#[derive(Clone, Copy, Default)]
struct Serve {
    ignore_range: bool,
    chunked: bool,
    /// Headers, then one body byte every 100 ms.
    slow: bool,
    /// Claimed total size (bytes past the real body read as zeros).
    advertised_size: Option<usize>,
    etag: Option<&'static str>,
}

#[derive(Clone)]
enum Route {
    File(Arc<Vec<u8>>, Serve),
    Redirect(String),
}

#[derive(Default)]
struct Server {
    port: u16,
    routes: Mutex<HashMap<String, Route>>,
    hits: Mutex<HashMap<String, u64>>,
    total_hits: AtomicU64,
    body_bytes: AtomicU64,
    /// (path, Range, If-None-Match) of every request.
    log: Mutex<Vec<(String, String, String)>>,
}

impl Server {
    async fn start() -> Arc<Self> {
        let v4 = TcpListener::bind("127.0.0.1:0").await.expect("bind v4");
        let port = v4.local_addr().expect("addr").port();
        let v6 = TcpListener::bind(("::1", port)).await.expect("bind ::1");
        let server = Arc::new(Server {
            port,
            ..Default::default()
        });
        for listener in [v4, v6] {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let server = Arc::clone(&server);
                    tokio::spawn(async move {
                        let _ = server.handle(socket).await;
                    });
                }
            });
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn file(&self, path: &str, body: Vec<u8>, serve: Serve) -> String {
        self.route(path, Route::File(Arc::new(body), serve));
        self.url(path)
    }

    fn route(&self, path: &str, route: Route) {
        self.routes.lock().expect("routes").insert(path.into(), route);
    }

    fn hits(&self, path: &str) -> u64 {
        self.hits.lock().expect("hits").get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> u64 {
        self.total_hits.load(Ordering::SeqCst)
    }

    fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }

    async fn handle(self: Arc<Self>, mut socket: TcpStream) -> io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await?;
            if n == 0 || head.len() > 65_536 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        self.total_hits.fetch_add(1, Ordering::SeqCst);
        *self.hits.lock().expect("hits").entry(path.clone()).or_default() += 1;
        let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
        self.log
            .lock()
            .expect("log")
            .push((path.clone(), header("range"), header("if-none-match")));
        let route = self.routes.lock().expect("routes").get(&path).cloned();
        match route {
            None => {
                let reply = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                socket.write_all(reply.as_bytes()).await
            }
            Some(Route::Redirect(location)) => {
                let reply = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                socket.write_all(reply.as_bytes()).await
            }
            Some(Route::File(body, serve)) => self.serve_file(&mut socket, &body, serve, &headers).await,
        }
    }

    async fn serve_file(
        &self,
        socket: &mut TcpStream,
        body: &[u8],
        serve: Serve,
        headers: &HashMap<String, String>,
    ) -> io::Result<()> {
        let total = serve.advertised_size.unwrap_or(body.len());
        let etag = serve.etag.map(|t| format!("ETag: {t}\r\n")).unwrap_or_default();
        if serve.etag.is_some() && headers.get("if-none-match").map(String::as_str) == serve.etag {
            let reply = format!("HTTP/1.1 304 Not Modified\r\n{etag}Connection: close\r\n\r\n");
            return socket.write_all(reply.as_bytes()).await;
        }
        let range = headers
            .get("range")
            .filter(|_| !serve.ignore_range)
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok())));
        let (status, start, end, content_range) = match range {
            Some((start, _)) if start >= total => {
                let reply = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                return socket.write_all(reply.as_bytes()).await;
            }
            Some((start, last)) => {
                let last = last.unwrap_or(total - 1).min(total - 1);
                let header = format!("Content-Range: bytes {start}-{last}/{total}\r\n");
                ("206 Partial Content", start, last + 1, header)
            }
            None => ("200 OK", 0, total, String::new()),
        };
        let bytes: Vec<u8> = (start..end).map(|i| body.get(i).copied().unwrap_or(0)).collect();
        let length = if serve.chunked {
            "Transfer-Encoding: chunked\r\n".to_string()
        } else {
            format!("Content-Length: {}\r\n", bytes.len())
        };
        let reply = format!("HTTP/1.1 {status}\r\n{length}{content_range}{etag}Connection: close\r\n\r\n");
        socket.write_all(reply.as_bytes()).await?;
        if serve.slow {
            for byte in bytes {
                socket.write_all(&[byte]).await?;
                self.body_bytes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Ok(());
        }
        for piece in bytes.chunks(if serve.chunked { 1000 } else { 16 * 1024 }) {
            if serve.chunked {
                socket.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await?;
                socket.write_all(piece).await?;
                socket.write_all(b"\r\n").await?;
            } else {
                socket.write_all(piece).await?;
            }
            self.body_bytes.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        if serve.chunked {
            socket.write_all(b"0\r\n\r\n").await?;
        }
        socket.flush().await
    }
}

// ---------------------------------------------------------------------------------------
// Probers

/// Maps a few names to loopback, like a hosts file; everything else does not exist.
struct LoopbackNames;

#[async_trait]
impl Resolver for LoopbackNames {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        match host {
            "localhost" | "video.test" => Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "unknown test name")),
        }
    }
}

fn config(allow_private_networks: bool) -> ProbeConfig {
    ProbeConfig {
        timeout_ms: 5000,
        max_bytes: 4_194_304,
        cache_ttl_secs: 3600,
        allowed_hosts: Vec::new(),
        allow_private_networks,
    }
}

fn prober(config: ProbeConfig) -> Prober {
    Prober::with_resolver(&config, Arc::new(LoopbackNames)).expect("prober")
}

fn lab() -> Prober {
    prober(config(true))
}

fn invalid(result: Result<VideoInfo, ProbeError>) -> String {
    match result {
        Err(ProbeError::Invalid(message)) => message,
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn unreachable(result: Result<VideoInfo, ProbeError>) -> String {
    match result {
        Err(ProbeError::Unreachable(message)) => message,
        other => panic!("expected unreachable, got {other:?}"),
    }
}

fn forbidden(result: Result<VideoInfo, ProbeError>) -> String {
    match result {
        Err(ProbeError::Forbidden(message)) => message,
        other => panic!("expected forbidden, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The walker on the real fixtures (pure)

#[test]
fn every_fixture_walks_to_its_known_duration_whatever_the_read_size() {
    for (name, container, ms, audio) in FIXTURES {
        let data = fixture(name);
        for chunk in [1, 16, 100, 4096, data.len()] {
            let movie = walk_bytes(&data, chunk).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (movie.container, movie.duration_ms, movie.has_audio, movie.has_video),
                (*container, *ms, *audio, true),
                "{name} read {chunk} bytes at a time"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Containers over HTTP

#[tokio::test]
async fn a_faststart_mp4_with_audio_is_measured_from_one_small_range_request() {
    let server = Server::start().await;
    let data = fixture("faststart_2s_audio.mp4");
    let len = data.len() as u64;
    let url = server.file("/v.mp4", data, Serve::default());
    let prober = lab();
    let info = prober.probe(&url).await.expect("probe");
    assert_eq!(
        info,
        VideoInfo {
            container: Container::Mp4,
            duration_ms: 2000,
            size: Some(len),
            has_audio: true
        }
    );
    assert!(server.total_hits() <= 2, "{} requests", server.total_hits());
    assert!(server.body_bytes() < 64 * 1024);
    let stats = prober.stats();
    assert!(stats.requests <= 2 && stats.bytes_read < 64 * 1024, "{stats:?}");
    println!("faststart: {stats:?}, server sent {} body bytes", server.body_bytes());
}

#[tokio::test]
async fn moov_after_a_large_mdat_is_fetched_with_at_most_three_requests() {
    let server = Server::start().await;
    let data = with_big_mdat(&fixture("moov_end_4_2s.mp4"), 5_000_000);
    let len = data.len() as u64;
    let url = server.file("/end.mp4", data, Serve::default());
    let prober = lab();
    let info = prober.probe(&url).await.expect("probe");
    assert_eq!(
        (info.container, info.duration_ms, info.size),
        (Container::Mp4, 4200, Some(len))
    );
    assert!(!info.has_audio);
    let stats = prober.stats();
    assert!(server.total_hits() <= 3, "{} requests", server.total_hits());
    assert!(stats.bytes_read < 128 * 1024, "{stats:?}");
    println!("moov at end: {stats:?}, server sent {} body bytes", server.body_bytes());
}

#[tokio::test]
async fn a_quicktime_file_with_audio_and_moov_at_the_end_is_mov() {
    let server = Server::start().await;
    let data = with_big_mdat(&fixture("clip_4_2s_audio.mov"), 1_000_000);
    let url = server.file("/clip.mov", data, Serve::default());
    let info = lab().probe(&url).await.expect("probe");
    assert_eq!(
        (info.container, info.duration_ms, info.has_audio),
        (Container::Mov, 4200, true)
    );
    assert!(server.total_hits() <= 3);
}

#[tokio::test]
async fn fragmented_files_are_measured_from_mehd_or_their_fragments() {
    let server = Server::start().await;
    let prober = lab();
    for name in [
        "fragmented_4_2s.mp4",
        "fragmented_partial_4_2s.mp4",
        "fragmented_mehd_4_2s.mp4",
    ] {
        let url = server.file(&format!("/{name}"), fixture(name), Serve::default());
        let info = prober.probe(&url).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((info.container, info.duration_ms), (Container::Mp4, 4200), "{name}");
    }
}

#[tokio::test]
async fn the_duration_limits_say_what_was_found() {
    let server = Server::start().await;
    let prober = lab();
    let at_limit = server.file("/30.mp4", fixture("limit_30s.mp4"), Serve::default());
    assert_eq!(prober.probe(&at_limit).await.expect("30 s").duration_ms, 30_000);
    let over = server.file("/31.mp4", fixture("over_31s.mp4"), Serve::default());
    assert_eq!(invalid(prober.probe(&over).await), "31 s, limit 30 s");
    let short = server.file("/short.mov", fixture("short_1_5s.mov"), Serve::default());
    assert_eq!(invalid(prober.probe(&short).await), "1.5 s, minimum 2 s");
}

#[tokio::test]
async fn other_containers_and_broken_files_are_invalid() {
    let server = Server::start().await;
    let prober = lab();
    let webm = server.file("/clip.webm", fixture("clip_2s.webm"), Serve::default());
    let refused = prober.probe(&webm).await;
    assert_eq!(
        refused.as_ref().map_err(ProbeError::code),
        Err("reference_video_invalid")
    );
    assert_eq!(invalid(refused), "container is webm, expected mp4 or mov");

    let mut truncated = fixture("faststart_2s_audio.mp4");
    truncated.truncate(900); // inside moov
    let url = server.file("/cut.mp4", truncated, Serve::default());
    assert!(invalid(prober.probe(&url).await).contains("malformed"));
}

#[tokio::test]
async fn a_file_over_100_mb_is_refused_by_its_advertised_size() {
    let server = Server::start().await;
    let serve = Serve {
        advertised_size: Some(104_857_600),
        ..Default::default()
    };
    let url = server.file("/big.mp4", fixture("faststart_2s_audio.mp4"), serve);
    let prober = lab();
    assert_eq!(invalid(prober.probe(&url).await), "104857600 bytes, limit 100000000");
    assert_eq!(server.total_hits(), 1);
    // A generated video has no size limit.
    assert_eq!(prober.probe_result(&url).await.expect("result").duration_ms, 2000);
}

// ---------------------------------------------------------------------------------------
// Servers that misbehave

#[tokio::test]
async fn a_server_that_ignores_range_is_read_only_as_far_as_needed() {
    let server = Server::start().await;
    let ignore = Serve {
        ignore_range: true,
        ..Default::default()
    };
    let prober = prober(ProbeConfig {
        max_bytes: 256 * 1024,
        ..config(true)
    });
    let small = server.file("/small.mp4", fixture("faststart_2s_audio.mp4"), ignore);
    assert_eq!(prober.probe(&small).await.expect("faststart").duration_ms, 2000);

    let big = with_big_mdat(&fixture("moov_end_4_2s.mp4"), 8_000_000);
    let url = server.file("/big-end.mp4", big.clone(), ignore);
    let before = prober.stats().bytes_read;
    let message = unreachable(prober.probe(&url).await);
    assert!(
        message.contains("ignores Range") && message.contains("262144"),
        "{message}"
    );
    let read = prober.stats().bytes_read - before;
    // Kept: at most the cap. Received: the cap plus what hyper already held in its read
    // buffer when reading stopped (its buffer never exceeds ~408 KiB).
    assert!(read <= (256 + 512) * 1024, "read {read} bytes past the cap");
    assert!(read < big.len() as u64 / 4, "read {read} bytes: most of the file");
    println!("ignored Range: read {read} bytes of a {} byte file", big.len());

    // The same file from a server that honours Range is fine within the same cap.
    let ranged = server.file("/big-end-ranged.mp4", big, Serve::default());
    assert_eq!(prober.probe(&ranged).await.expect("ranged").duration_ms, 4200);
}

#[tokio::test]
async fn chunked_answers_without_a_length_are_read() {
    let server = Server::start().await;
    let chunked = Serve {
        ignore_range: true,
        chunked: true,
        ..Default::default()
    };
    let prober = lab();
    for name in ["faststart_2s_audio.mp4", "moov_end_4_2s.mp4", "fragmented_4_2s.mp4"] {
        let url = server.file(&format!("/{name}"), fixture(name), chunked);
        let info = prober.probe(&url).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(info.duration_ms >= 2000, "{name}");
    }
}

#[tokio::test]
async fn a_slow_loris_server_times_out() {
    let server = Server::start().await;
    let slow = Serve {
        slow: true,
        ..Default::default()
    };
    let url = server.file("/slow.mp4", fixture("faststart_2s_audio.mp4"), slow);
    let prober = prober(ProbeConfig {
        timeout_ms: 1500,
        ..config(true)
    });
    let message = unreachable(prober.probe(&url).await);
    assert_eq!(message, "no complete answer within 1500 ms");
}

#[tokio::test]
async fn missing_files_and_closed_ports_are_unreachable() {
    let server = Server::start().await;
    let prober = lab();
    let message = unreachable(prober.probe(&server.url("/nothing.mp4")).await);
    assert!(message.contains("404"), "{message}");

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let message = unreachable(prober.probe(&format!("http://127.0.0.1:{port}/v.mp4")).await);
    assert!(message.contains("cannot connect"), "{message}");
}

// ---------------------------------------------------------------------------------------
// Address rules

#[tokio::test]
async fn every_spelling_of_loopback_is_refused_without_a_request_unless_allowed() {
    let server = Server::start().await;
    server.file("/v.mp4", fixture("faststart_2s_audio.mp4"), Serve::default());
    let port = server.port;
    let spellings = [
        "127.0.0.1",
        "localhost",
        "2130706433",
        "0177.0.0.1",
        "0x7f000001",
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
    ];
    let strict = prober(config(false));
    for host in spellings {
        let url = format!("http://{host}:{port}/v.mp4");
        let refused = strict.probe(&url).await;
        assert_eq!(
            refused.as_ref().map_err(ProbeError::code),
            Err("reference_video_forbidden"),
            "{url}"
        );
    }
    assert_eq!(server.total_hits(), 0, "no refused URL reached the server");
    assert_eq!(strict.stats().requests, 0);

    // No cache: the spellings all normalise to one URL, and each must really connect.
    let open = prober(ProbeConfig {
        cache_ttl_secs: 0,
        ..config(true)
    });
    for host in spellings {
        let url = format!("http://{host}:{port}/v.mp4");
        let info = open.probe(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(info.duration_ms, 2000);
    }
    assert!(server.total_hits() >= spellings.len() as u64);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_private_networks_are_allowed() {
    let server = Server::start().await;
    server.file("/v.mp4", fixture("faststart_2s_audio.mp4"), Serve::default());
    let url = format!("http://video.test:{}/v.mp4", server.port);
    let message = forbidden(prober(config(false)).probe(&url).await);
    assert!(message.contains("127.0.0.1"), "{message}");
    assert_eq!(server.total_hits(), 0);
    assert_eq!(lab().probe(&url).await.expect("allowed").duration_ms, 2000);
}

#[test]
fn a_name_with_any_internal_address_is_refused_whole() {
    // Pure: no connection is made to these addresses.
    let policy = AddressPolicy::default();
    let public: IpAddr = "93.184.215.14".parse().expect("ip");
    let metadata: IpAddr = "169.254.169.254".parse().expect("ip");
    assert!(checked_addresses("x.test", vec![public], &policy).is_ok());
    let refused = checked_addresses("x.test", vec![public, metadata], &policy)
        .expect_err("one internal address refuses the name");
    assert_eq!(refused.ip, metadata);
    for internal in ["10.0.0.7", "192.168.1.1", "fd00::1", "fe80::1", "100.64.0.1"] {
        let ip: IpAddr = internal.parse().expect("ip");
        assert!(checked_addresses("x.test", vec![ip], &policy).is_err(), "{internal}");
    }
}

#[tokio::test]
async fn a_redirect_to_a_host_outside_the_allow_list_is_never_followed() {
    let server = Server::start().await;
    server.file("/other.mp4", fixture("faststart_2s_audio.mp4"), Serve::default());
    server.route(
        "/start.mp4",
        Route::Redirect(format!("http://localhost:{}/other.mp4", server.port)),
    );
    let prober = prober(ProbeConfig {
        allowed_hosts: vec!["127.0.0.1".into()],
        ..config(true)
    });
    let message = forbidden(prober.probe(&server.url("/start.mp4")).await);
    assert!(
        message.contains("redirect") && message.contains("localhost"),
        "{message}"
    );
    assert_eq!(server.hits("/start.mp4"), 1);
    assert_eq!(server.hits("/other.mp4"), 0, "the second location is never fetched");
}

#[tokio::test]
async fn redirects_are_followed_up_to_five_hops() {
    let server = Server::start().await;
    server.file("/v.mp4", fixture("moov_end_4_2s.mp4"), Serve::default());
    for hop in 1..=6 {
        let next = if hop == 1 {
            "/v.mp4".to_string()
        } else {
            format!("/r{}", hop - 1)
        };
        server.route(&format!("/r{hop}"), Route::Redirect(next));
    }
    let prober = lab();
    let info = prober.probe(&server.url("/r5")).await.expect("5 hops");
    assert_eq!(info.duration_ms, 4200);
    let message = unreachable(prober.probe(&server.url("/r6")).await);
    assert!(message.contains("more than 5 redirects"), "{message}");
    assert_eq!(server.hits("/v.mp4"), 1);
}

#[tokio::test]
async fn result_urls_skip_the_allow_list_and_the_duration_limits_but_not_the_address_rules() {
    let server = Server::start().await;
    let url = server.file("/result.mp4", fixture("over_31s.mp4"), Serve::default());
    let listed = ProbeConfig {
        allowed_hosts: vec!["cdn.example.com".into()],
        ..config(true)
    };
    let prober = prober(listed.clone());
    let message = forbidden(prober.probe(&url).await);
    assert!(message.contains("not in the allowed hosts"), "{message}");
    assert_eq!(server.total_hits(), 0);
    let info = prober.probe_result(&url).await.expect("result");
    assert_eq!(info.duration_ms, 31_000);

    let strict = Prober::with_resolver(
        &ProbeConfig {
            allow_private_networks: false,
            ..listed
        },
        Arc::new(LoopbackNames),
    )
    .expect("prober");
    forbidden(strict.probe_result(&url).await);
}

// ---------------------------------------------------------------------------------------
// Cache and batches

#[tokio::test]
async fn a_second_probe_of_the_same_url_makes_no_request() {
    let server = Server::start().await;
    let url = server.file("/v.mp4", fixture("faststart_2s_audio.mp4"), Serve::default());
    let prober = lab();
    let first = prober.probe(&url).await.expect("first");
    let stats = prober.stats();
    let second = prober.probe(&url).await.expect("second");
    assert_eq!(first, second);
    let after = prober.stats();
    assert_eq!(after.requests, stats.requests);
    assert_eq!(after.bytes_read, stats.bytes_read);
    assert_eq!((after.probes, after.cache_hits), (1, 1));
    assert_eq!(server.hits("/v.mp4"), 1);
}

#[tokio::test]
async fn after_the_ttl_an_unchanged_etag_revalidates_with_one_empty_answer() {
    let server = Server::start().await;
    let serve = Serve {
        etag: Some("\"v1\""),
        ..Default::default()
    };
    let url = server.file("/v.mp4", fixture("faststart_2s_audio.mp4"), serve);
    let prober = prober(ProbeConfig {
        cache_ttl_secs: 1,
        ..config(true)
    });
    let first = prober.probe(&url).await.expect("first");
    let bytes = prober.stats().bytes_read;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(prober.probe(&url).await.expect("revalidated"), first);
    assert_eq!(prober.stats().bytes_read, bytes, "304: no body read again");
    assert_eq!(server.hits("/v.mp4"), 2);
    let log = server.log.lock().expect("log").clone();
    assert_eq!(log[1].2, "\"v1\"", "If-None-Match sent: {log:?}");
}

#[tokio::test]
async fn references_are_probed_together_and_the_first_failure_is_named_by_index() {
    let server = Server::start().await;
    let good = server.file("/a.mp4", fixture("faststart_2s_audio.mp4"), Serve::default());
    let other = server.file("/b.mov", fixture("clip_4_2s_audio.mov"), Serve::default());
    let long = server.file("/c.mp4", fixture("over_31s.mp4"), Serve::default());
    let prober = lab();
    let infos = prober
        .probe_references(&[good.clone(), other.clone()])
        .await
        .expect("two good videos");
    assert_eq!(
        infos.iter().map(|i| i.duration_ms).collect::<Vec<_>>(),
        vec![2000, 4200]
    );
    let (index, error) = prober
        .probe_references(&[good.clone(), long, server.url("/missing.mp4")])
        .await
        .expect_err("the second is too long");
    assert_eq!((index, error.code()), (1, "reference_video_invalid"));
    let four = vec![good; 4];
    assert_eq!(prober.probe_references(&four).await.map_err(|e| e.0), Err(3));
    assert_eq!(prober.probe_references(&[]).await.map_err(|e| e.0), Err(0));
}

#[tokio::test]
async fn one_deadline_covers_all_references() {
    let server = Server::start().await;
    let good = server.file("/a.mp4", fixture("faststart_2s_audio.mp4"), Serve::default());
    let slow = Serve {
        slow: true,
        ..Default::default()
    };
    let stuck = server.file("/slow.mp4", fixture("moov_end_4_2s.mp4"), slow);
    let prober = prober(ProbeConfig {
        timeout_ms: 1500,
        ..config(true)
    });
    let (index, error) = prober
        .probe_references(&[good, stuck])
        .await
        .expect_err("the slow one times out");
    assert_eq!((index, error.code()), (1, "reference_video_unreachable"));
}

#[test]
fn error_codes_are_the_documented_ones() {
    assert_eq!(ProbeError::Invalid(String::new()).code(), "reference_video_invalid");
    assert_eq!(
        ProbeError::Unreachable(String::new()).code(),
        "reference_video_unreachable"
    );
    assert_eq!(ProbeError::Forbidden(String::new()).code(), "reference_video_forbidden");
}

#[test]
fn the_prober_and_its_futures_can_cross_threads() {
    fn shared<T: Send + Sync>(_: &T) {}
    fn sendable<T: Send>(_: &T) {}
    let prober = lab();
    shared(&prober);
    let urls = Vec::new();
    sendable(&prober.probe_references(&urls));
    sendable(&prober.probe("http://127.0.0.1/"));
    sendable(&prober.probe_result("http://127.0.0.1/"));
}
