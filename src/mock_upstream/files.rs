//! The file host: stream, base64 and URL uploads kept in memory; byte serving with `Range`.

use std::fmt;

use actix_multipart::{Field, Multipart};
use actix_web::http::StatusCode;
use actix_web::http::header::{ACCEPT_RANGES, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError, web};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use rand::Rng;
use serde_json::{Value, json};
use url::Url;

use super::{Shared, lock, net};

/// Largest file the host keeps: 100 MB.
pub(crate) const MAX_FILE_BYTES: usize = 100_000_000;
/// Largest JSON body (a base64 upload of the largest file, with slack).
pub(crate) const MAX_JSON_BODY: usize = MAX_FILE_BYTES / 3 * 4 + 1024 * 1024;
/// Largest multipart text field (`upload_path`, `file_name`).
const MAX_TEXT_FIELD: usize = 4096;
const FILE_LIFETIME_HOURS: i64 = 72;

/// One uploaded file.
#[derive(Debug, Clone)]
pub(crate) struct StoredFile {
    mime_type: String,
    data: Bytes,
}

/// A file host refusal: non-2xx with `{success: false, code, msg}`.
#[derive(Debug)]
pub(crate) struct FileError {
    status: StatusCode,
    msg: String,
}

impl FileError {
    fn bad(msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            msg: msg.into(),
        }
    }

    fn too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            msg: format!("File too large: at most {MAX_FILE_BYTES} bytes"),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.msg)
    }
}

impl ResponseError for FileError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"success": false, "code": self.status.as_u16(), "msg": self.msg}))
    }
}

/// Handlers answer the upstream error shape for a bad key, the file host shape otherwise.
type FileResult = Result<HttpResponse, actix_web::Error>;

impl Shared {
    /// Stores a file and answers the file host's success body.
    fn store_file(
        &self,
        name: Option<String>,
        mime_type: Option<String>,
        data: Bytes,
    ) -> Result<HttpResponse, FileError> {
        if data.is_empty() {
            return Err(FileError::bad("The file is empty"));
        }
        let file_name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "upload.bin".into());
        let mime_type = mime_type
            .filter(|m| !m.is_empty() && m != "application/octet-stream")
            .unwrap_or_else(|| guess_mime(&file_name, &data).into());
        let file_id = new_file_id();
        let file_url = format!("{}/files/uploads/{file_id}", self.base_url);
        let now = chrono::Utc::now();
        let expires = now + chrono::TimeDelta::hours(FILE_LIFETIME_HOURS);
        let body = json!({
            "success": true,
            "code": 200,
            "msg": "ok",
            "data": {
                "file_id": file_id,
                "file_name": file_name,
                "file_size": data.len(),
                "mime_type": mime_type,
                "file_url": file_url,
                "download_url": file_url,
                "upload_time": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        });
        lock(&self.files).insert(file_id, StoredFile { mime_type, data });
        self.count(|stats| stats.uploads += 1);
        Ok(HttpResponse::Ok().json(body))
    }
}

fn new_file_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("file_{suffix}")
}

/// By extension, then by sniffing an ISO-BMFF `ftyp` box.
fn guess_mime(name: &str, data: &[u8]) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => return "video/mp4",
        "mov" => return "video/quicktime",
        "webm" => return "video/webm",
        "png" => return "image/png",
        "jpg" | "jpeg" => return "image/jpeg",
        "json" => return "application/json",
        "txt" => return "text/plain",
        _ => {}
    }
    match data.get(4..12) {
        Some([b'f', b't', b'y', b'p', b'q', b't', b' ', b' ']) => "video/quicktime",
        Some([b'f', b't', b'y', b'p', ..]) => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// Reads a stream of chunks into memory, refusing more than `limit` bytes.
async fn collect<S, E>(stream: S, limit: usize, too_large: impl Fn() -> FileError) -> Result<Bytes, FileError>
where
    S: futures_util::Stream<Item = Result<Bytes, E>>,
    E: fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    let mut buffer = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| FileError::bad(format!("Reading the upload failed: {error}")))?;
        if buffer.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

async fn text_field(field: Field) -> Result<String, FileError> {
    let data = collect(field, MAX_TEXT_FIELD, || FileError::bad("A text field is too long")).await?;
    String::from_utf8(data.to_vec()).map_err(|_| FileError::bad("A text field is not UTF-8"))
}

/// `POST /api/v1/files/upload/stream`: multipart `file`, optional `upload_path` and `file_name`.
pub(crate) async fn upload_stream(req: HttpRequest, payload: web::Payload, shared: web::Data<Shared>) -> FileResult {
    shared.authorize(&req)?;
    let mut multipart = Multipart::new(req.headers(), payload);
    let (mut file, mut file_name) = (None, None);
    let malformed =
        |error: actix_multipart::MultipartError| FileError::bad(format!("Malformed multipart body: {error}"));
    while let Some(field) = multipart.try_next().await.map_err(malformed)? {
        match field.name() {
            Some("file") => {
                let name = field
                    .content_disposition()
                    .and_then(|cd| cd.get_filename())
                    .map(str::to_owned);
                let mime = field.content_type().map(ToString::to_string);
                let data = collect(field, MAX_FILE_BYTES, FileError::too_large).await?;
                file = Some((name, mime, data));
            }
            Some("file_name") => file_name = Some(text_field(field).await?),
            Some("upload_path") => drop(text_field(field).await?),
            _ => drop(collect(field, MAX_FILE_BYTES, FileError::too_large).await?),
        }
    }
    let (name, mime, data) = file.ok_or_else(|| FileError::bad("Missing multipart field `file`"))?;
    Ok(shared.store_file(file_name.or(name), mime, data)?)
}

fn json_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, FileError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(FileError::bad("The request body must be a JSON object")),
        Err(error) => Err(FileError::bad(format!("Malformed JSON body: {error}"))),
    }
}

fn str_field<'a>(body: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

/// `POST /api/v1/files/upload/base64`: JSON `base64_data` (plain or a `data:` URL), optional `file_name`.
pub(crate) async fn upload_base64(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> FileResult {
    shared.authorize(&req)?;
    let body = json_body(&body)?;
    let encoded =
        str_field(&body, "base64_data").ok_or_else(|| FileError::bad("Missing string field `base64_data`"))?;
    let (mime, encoded) = match encoded
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        Some((mime, data)) => (Some(mime.to_owned()), data),
        None => (None, encoded),
    };
    let encoded: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let data = STANDARD
        .decode(&encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(&encoded))
        .map_err(|_| FileError::bad("`base64_data` is not valid base64"))?;
    if data.len() > MAX_FILE_BYTES {
        return Err(FileError::too_large().into());
    }
    Ok(shared.store_file(str_field(&body, "file_name").map(str::to_owned), mime, data.into())?)
}

/// `POST /api/v1/files/upload/url`: JSON `file_url`; fetched only from loopback hosts.
pub(crate) async fn upload_url(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> FileResult {
    shared.authorize(&req)?;
    let body = json_body(&body)?;
    let text = str_field(&body, "file_url").ok_or_else(|| FileError::bad("Missing string field `file_url`"))?;
    let url = Url::parse(text)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| FileError::bad("`file_url` must be an http or https URL"))?;
    if !net::is_loopback_host(&url) {
        return Err(FileError::bad("The mock file host fetches only loopback URLs (it never reaches out)").into());
    }
    let default_name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let fetcher = shared.clone().into_inner();
    let fetched = shared.spawn(async move { fetch(&fetcher.http, url).await }).await;
    let (mime, data) = fetched.map_err(|_| FileError::bad("Fetching `file_url` was interrupted"))??;
    let name = str_field(&body, "file_name").map(str::to_owned).or(default_name);
    Ok(shared.store_file(name, mime, data)?)
}

async fn fetch(http: &reqwest::Client, url: Url) -> Result<(Option<String>, Bytes), FileError> {
    let response = http
        .get(url)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|error| FileError::bad(format!("Fetching `file_url` failed: {error}")))?;
    if !response.status().is_success() {
        return Err(FileError::bad(format!(
            "Fetching `file_url` failed: HTTP {}",
            response.status().as_u16()
        )));
    }
    let mime = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let data = collect(response.bytes_stream(), MAX_FILE_BYTES, FileError::too_large).await?;
    Ok((mime, data))
}

/// `GET|HEAD /files/uploads/{file_id}`: an uploaded file (no key needed: its URL goes into
/// `video_urls`, fetched by whoever probes it).
pub(crate) async fn uploaded_file(
    req: HttpRequest,
    path: web::Path<String>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let file = lock(&shared.files).get(path.as_str()).cloned();
    match file {
        Some(file) => serve_bytes(&req, file.data, &file.mime_type),
        None => not_found(),
    }
}

pub(crate) fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"success": false, "code": 404, "msg": "File not found"}))
}

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    Full,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range; anything else is served whole.
fn parse_range(header: &str, len: u64) -> Ranged {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ranged::Full;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Full;
    };
    if spec.contains(',') {
        return Ranged::Full;
    }
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return match last.parse::<u64>() {
            Ok(0) => Ranged::Unsatisfiable,
            Ok(_) if len == 0 => Ranged::Unsatisfiable,
            Ok(n) => Ranged::Part(len.saturating_sub(n), len - 1),
            Err(_) => Ranged::Full,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return Ranged::Full;
    };
    let end = match last {
        "" => len.saturating_sub(1),
        text => match text.parse::<u64>() {
            Ok(end) if end >= start => end.min(len.saturating_sub(1)),
            _ => return Ranged::Full,
        },
    };
    if start >= len {
        Ranged::Unsatisfiable
    } else {
        Ranged::Part(start, end)
    }
}

/// The range a request asks of a `len`-byte file, and the answer's head for it: 200, 206 with
/// `Content-Range`, or 416 with `bytes */len`.
fn range_head(req: &HttpRequest, len: u64, content_type: &str) -> (HttpResponseBuilder, Ranged) {
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(Ranged::Full, |h| parse_range(h, len));
    let mut response = match range {
        Ranged::Full => HttpResponse::Ok(),
        Ranged::Part(..) => HttpResponse::PartialContent(),
        Ranged::Unsatisfiable => HttpResponse::RangeNotSatisfiable(),
    };
    response
        .insert_header((ACCEPT_RANGES, "bytes"))
        .insert_header((CONTENT_TYPE, content_type.to_owned()));
    match range {
        Ranged::Full => {}
        Ranged::Part(start, end) => {
            response.insert_header((CONTENT_RANGE, format!("bytes {start}-{end}/{len}")));
        }
        Ranged::Unsatisfiable => {
            response.insert_header((CONTENT_RANGE, format!("bytes */{len}")));
        }
    }
    (response, range)
}

/// Serves `data` whole (200) or one range of it (206, or 416); HEAD gets the same headers.
pub(crate) fn serve_bytes(req: &HttpRequest, data: Bytes, content_type: &str) -> HttpResponse {
    let (mut response, range) = range_head(req, data.len() as u64, content_type);
    match range {
        Ranged::Full => response.body(data),
        // Part bounds come from parse_range and lie within 0..len.
        Ranged::Part(start, end) => response.body(data.slice(start as usize..=end as usize)),
        Ranged::Unsatisfiable => response.finish(),
    }
}

/// Serves `video` followed by a `free` box that pads the file to `total` bytes (at least 8
/// more than the video), whole or one range of it, generated as it is sent: a 100 MB result
/// costs the mock no memory. The padding is a fixed byte pattern, so every read of the same
/// file gives the same bytes.
pub(crate) fn serve_padded(req: &HttpRequest, video: Vec<u8>, total: u64, content_type: &str) -> HttpResponse {
    let mut prefix = video;
    let pad = u32::try_from(total - prefix.len() as u64).unwrap_or(u32::MAX);
    prefix.extend_from_slice(&pad.to_be_bytes());
    prefix.extend_from_slice(b"free");
    let (mut response, range) = range_head(req, total, content_type);
    let (start, end) = match range {
        Ranged::Full => (0, total - 1),
        Ranged::Part(start, end) => (start, end),
        Ranged::Unsatisfiable => return response.finish(),
    };
    if req.method() == actix_web::http::Method::HEAD {
        return response.no_chunking(end + 1 - start).finish();
    }
    let prefix = Bytes::from(prefix);
    let chunks = futures_util::stream::unfold(start, move |at| {
        let prefix = prefix.clone();
        async move {
            (at <= end).then(|| {
                let stop = (at + PADDING_CHUNK).min(end + 1);
                (Ok::<_, std::io::Error>(padded_bytes(&prefix, at, stop)), stop)
            })
        }
    });
    response.no_chunking(end + 1 - start).streaming(chunks)
}

/// Bytes generated per chunk of a padded file.
const PADDING_CHUNK: u64 = 64 * 1024;
/// The padding's byte at position `i` is `i % 251`: a period no power of two divides, so a
/// misplaced chunk shows in a hash.
const PADDING_PERIOD: u64 = 251;

/// Bytes `at..stop` of `prefix` followed by the padding pattern.
fn padded_bytes(prefix: &[u8], at: u64, stop: u64) -> Bytes {
    static PATTERN: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        (0..PADDING_CHUNK + PADDING_PERIOD)
            .map(|i| (i % PADDING_PERIOD) as u8)
            .collect()
    });
    let mut out = Vec::with_capacity((stop - at) as usize);
    let fixed = prefix.len() as u64;
    if at < fixed {
        out.extend_from_slice(&prefix[at as usize..stop.min(fixed) as usize]);
    }
    let from = at.max(fixed);
    if from < stop {
        let phase = (from % PADDING_PERIOD) as usize;
        out.extend_from_slice(&PATTERN[phase..phase + (stop - from) as usize]);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_like_http_servers_do() {
        assert_eq!(parse_range("bytes=0-7", 100), Ranged::Part(0, 7));
        assert_eq!(parse_range("bytes=90-", 100), Ranged::Part(90, 99));
        assert_eq!(parse_range("bytes=90-500", 100), Ranged::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Ranged::Part(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), Ranged::Part(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Ranged::Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ranged::Full);
        assert_eq!(parse_range("items=0-1", 100), Ranged::Full);
    }

    #[test]
    fn a_padded_file_is_the_video_then_the_pattern_in_any_chunking() {
        let prefix = b"video-bytes";
        let whole = padded_bytes(prefix, 0, 1000);
        assert_eq!(&whole[..11], prefix);
        assert!((11..1000).all(|i| whole[i] == (i as u64 % PADDING_PERIOD) as u8));
        let pieces: Vec<u8> = [(0, 5), (5, 300), (300, 1000)]
            .iter()
            .flat_map(|(a, b)| padded_bytes(prefix, *a, *b).to_vec())
            .collect();
        assert_eq!(pieces, whole.to_vec());
    }

    #[test]
    fn mime_types_come_from_the_name_then_the_content() {
        assert_eq!(guess_mime("a.MOV", b""), "video/quicktime");
        assert_eq!(
            guess_mime("blob", &crate::mock_upstream::mp4_with_duration(1000)),
            "video/mp4"
        );
        assert_eq!(guess_mime("blob", b"hello world!"), "application/octet-stream");
    }
}
