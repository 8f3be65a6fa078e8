//! A local simulator of the upstream video API (create, query, file host, result files,
//! callbacks), for the demo and the tests. The product never depends on it.
// TEMPORARY stub until the mock branch merges.
#[derive(Debug, Clone)]
pub struct MockOptions {
    pub listen: std::net::SocketAddr,
    pub api_key: String,
    pub pending_ms: u64,
    pub processing_ms: u64,
    pub output_offset_ms: i64,
    pub allow_local_callbacks: bool,
}
impl Default for MockOptions {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 0).into(),
            api_key: "sk-evo-mock".into(),
            pending_ms: 300,
            processing_ms: 1000,
            output_offset_ms: 0,
            allow_local_callbacks: false,
        }
    }
}
pub struct MockServer;
impl MockServer {
    pub async fn start(_o: MockOptions) -> std::io::Result<MockServer> {
        Ok(MockServer)
    }
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], 0).into()
    }
    pub fn base_url(&self) -> String {
        String::new()
    }
    pub async fn stop(self) {}
}
pub fn mp4_with_duration(_d: u64) -> Vec<u8> {
    Vec::new()
}
pub async fn run(_o: MockOptions) -> std::io::Result<()> {
    Ok(())
}
