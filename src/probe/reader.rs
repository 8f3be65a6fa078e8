//! Range reads of one video for one probe, within a byte and a request budget.
//!
//! Normally each need of the walker is one `Range` request (at least [`CHUNK`] bytes, so
//! small boxes come together). A server that ignores `Range` answers 200 with the whole
//! file: the body is then read as a stream from the start, only as far as needed and never
//! past the byte budget.

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::header::{
    ACCEPT_ENCODING, CONTENT_RANGE, ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    RANGE,
};
use reqwest::{Method, StatusCode};

use super::ProbeError;
use super::boxes::Window;
use super::cache::Validator;
use super::fetch::SafeHttp;

/// Smallest range asked for: a faststart file's `ftyp` + `moov` usually fit in one.
pub(crate) const CHUNK: u64 = 32 * 1024;
/// Range requests per probe (redirect hops not counted): a plain file needs at most 3.
const MAX_REQUESTS: u32 = 16;

/// Result of a fill.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    Ready,
    /// The first request carried the cached validator and the server said 304.
    NotModified,
}

pub(crate) struct RangeReader<'a> {
    http: &'a SafeHttp,
    /// Where the next request goes: the URL after the first response's redirects.
    url: String,
    budget: u64,
    bytes_read: &'a AtomicU64,
    read: u64,
    requests: u32,
    offset: u64,
    window: Vec<u8>,
    at_eof: bool,
    file_size: Option<u64>,
    /// Set when the server ignored `Range`: the rest of the body, read on demand.
    stream: Option<reqwest::Response>,
    /// Sent on the first request only: a 304 means the cached measurement still holds.
    revalidate: Option<Validator>,
    /// The first response's validator; later responses must carry the same.
    validator: Option<Validator>,
}

impl<'a> RangeReader<'a> {
    pub(crate) fn new(
        http: &'a SafeHttp,
        url: &str,
        budget: u64,
        bytes_read: &'a AtomicU64,
        revalidate: Option<Validator>,
    ) -> Self {
        Self {
            http,
            url: url.to_string(),
            budget,
            bytes_read,
            read: 0,
            requests: 0,
            offset: 0,
            window: Vec::new(),
            at_eof: false,
            file_size: None,
            stream: None,
            revalidate,
            validator: None,
        }
    }

    pub(crate) fn window(&self) -> Window<'_> {
        Window {
            offset: self.offset,
            data: &self.window,
            at_eof: self.at_eof,
            file_size: self.file_size,
        }
    }

    pub(crate) fn file_size(&self) -> Option<u64> {
        self.file_size
    }

    pub(crate) fn validator(&self) -> Option<Validator> {
        self.validator.clone()
    }

    fn window_end(&self) -> u64 {
        self.offset.saturating_add(self.window.len() as u64)
    }

    /// Makes the window hold `[offset, offset + len)`, or as much of it as the file has.
    pub(crate) async fn fill(&mut self, offset: u64, len: u64) -> Result<Fill, ProbeError> {
        let mut want_end = offset.saturating_add(len);
        loop {
            if let Some(size) = self.file_size {
                want_end = want_end.min(size);
            }
            let inside = offset >= self.offset && offset <= self.window_end();
            if inside && (self.window_end() >= want_end || self.at_eof) {
                return Ok(Fill::Ready);
            }
            if self.stream.is_some() {
                self.read_stream(want_end).await?;
            } else if self.range_request(offset, want_end).await? == Fill::NotModified {
                return Ok(Fill::NotModified);
            }
        }
    }

    /// One `Range` request for what is missing, appended to the window when contiguous.
    async fn range_request(&mut self, offset: u64, want_end: u64) -> Result<Fill, ProbeError> {
        let append = offset >= self.offset && offset <= self.window_end();
        let start = if append { self.window_end() } else { offset };
        let remaining = self.budget.saturating_sub(self.read);
        // `u64::MAX` means "to the end of the file": read what the budget allows and see.
        let to_eof = want_end == u64::MAX;
        if remaining == 0 || (!to_eof && want_end.saturating_sub(start) > remaining) {
            return Err(self.over_budget());
        }
        let mut end = want_end.max(start.saturating_add(CHUNK));
        end = end.min(start.saturating_add(remaining));
        if let Some(size) = self.file_size {
            end = end.min(size);
        }
        if self.requests >= MAX_REQUESTS {
            return Err(ProbeError::Unreachable(format!(
                "more than {MAX_REQUESTS} range requests needed to read the video header"
            )));
        }
        self.requests += 1;
        let response = self.get(start, end).await?;
        self.check_validator(response.headers())?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = content_range(response.headers());
                let Some((first, total)) = range.and_then(|(f, _, t)| f.map(|f| (f, t))) else {
                    return Err(ProbeError::Unreachable(
                        "206 answer without a usable Content-Range".into(),
                    ));
                };
                if first != start {
                    return Err(ProbeError::Unreachable(format!(
                        "asked for bytes from {start}, got bytes from {first}"
                    )));
                }
                if total.is_some() {
                    self.file_size = total;
                }
                if !append {
                    self.offset = start;
                    self.window.clear();
                }
                self.read_body(response, end.saturating_sub(start)).await?;
                if self.file_size.is_some_and(|size| self.window_end() >= size) {
                    self.at_eof = true;
                }
                Ok(Fill::Ready)
            }
            StatusCode::OK => {
                // Range ignored: the whole file follows; read it from the start as needed.
                self.file_size = response.content_length();
                self.offset = 0;
                self.window.clear();
                self.at_eof = false;
                self.stream = Some(response);
                Ok(Fill::Ready)
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                if let Some((_, _, Some(total))) = content_range(response.headers()) {
                    self.file_size = Some(total);
                }
                if !append {
                    self.offset = start;
                    self.window.clear();
                }
                self.at_eof = true;
                Ok(Fill::Ready)
            }
            StatusCode::NOT_MODIFIED if self.requests == 1 && self.revalidate.is_some() => Ok(Fill::NotModified),
            status => Err(ProbeError::Unreachable(format!("the server answered {status}"))),
        }
    }

    async fn get(&mut self, start: u64, end: u64) -> Result<reqwest::Response, ProbeError> {
        let mut headers = HeaderMap::new();
        // Inclusive range; `end > start` here because the budget and file size leave room.
        let range = format!("bytes={start}-{}", end.saturating_sub(1).max(start));
        headers.insert(RANGE, header(&range)?);
        // Raw bytes: a compressed body would not be addressable by byte offsets.
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        if self.requests == 1 {
            match &self.revalidate {
                Some(Validator::ETag(tag)) => {
                    headers.insert(IF_NONE_MATCH, header(tag)?);
                }
                Some(Validator::LastModified(date)) => {
                    headers.insert(IF_MODIFIED_SINCE, header(date)?);
                }
                None => {}
            }
        }
        let fetched = self.http.send(Method::GET, &self.url, &headers, None).await?;
        // Later ranges go straight to where the redirects led.
        self.url = fetched.url.to_string();
        Ok(fetched.response)
    }

    /// Appends at most `limit` body bytes to the window; the rest is never read.
    async fn read_body(&mut self, mut response: reqwest::Response, limit: u64) -> Result<(), ProbeError> {
        let mut taken = 0_u64;
        while taken < limit {
            let Some(chunk) = response.chunk().await.map_err(read_error)? else {
                break;
            };
            self.count(chunk.len());
            let keep = usize::try_from(limit - taken).map_or(chunk.len(), |n| n.min(chunk.len()));
            self.window.extend_from_slice(chunk.get(..keep).unwrap_or_default());
            taken += keep as u64;
        }
        Ok(())
    }

    /// Reads the ignored-Range body on until the window reaches `want_end` or the file ends.
    async fn read_stream(&mut self, want_end: u64) -> Result<(), ProbeError> {
        while self.window_end() < want_end && !self.at_eof {
            if self.read >= self.budget {
                return Err(self.over_budget());
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            match stream.chunk().await.map_err(read_error)? {
                Some(chunk) => {
                    self.count(chunk.len());
                    let room = self.budget.saturating_sub(self.window.len() as u64);
                    let keep = usize::try_from(room).map_or(chunk.len(), |n| n.min(chunk.len()));
                    self.window.extend_from_slice(chunk.get(..keep).unwrap_or_default());
                }
                None => {
                    self.at_eof = true;
                    self.file_size = Some(self.window_end());
                    self.stream = None;
                }
            }
        }
        Ok(())
    }

    fn count(&mut self, n: usize) {
        self.read = self.read.saturating_add(n as u64);
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn over_budget(&self) -> ProbeError {
        let how = if self.stream.is_some() {
            "the server ignores Range requests and the video header lies past"
        } else {
            "reading the video header would exceed"
        };
        ProbeError::Unreachable(format!("{how} the read limit of {} bytes", self.budget))
    }

    /// Keeps the first response's validator and refuses a file that changes mid-probe.
    fn check_validator(&mut self, headers: &HeaderMap) -> Result<(), ProbeError> {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let seen = text(ETAG)
            .map(Validator::ETag)
            .or_else(|| text(LAST_MODIFIED).map(Validator::LastModified));
        match (&self.validator, seen) {
            (None, seen) => self.validator = seen,
            (Some(first), Some(seen)) if *first != seen => {
                return Err(ProbeError::Unreachable(
                    "the video changed while it was being read".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

fn header(value: &str) -> Result<HeaderValue, ProbeError> {
    HeaderValue::from_str(value).map_err(|_| ProbeError::Unreachable(format!("cannot send header value {value:?}")))
}

fn read_error(error: reqwest::Error) -> ProbeError {
    ProbeError::Unreachable(format!("reading the video failed: {error}"))
}

/// `bytes a-b/total`, `bytes a-b/*` or `bytes */total` → (a, b, total).
fn content_range(headers: &HeaderMap) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    if range.trim() == "*" {
        return Some((None, None, total));
    }
    let (first, last) = range.trim().split_once('-')?;
    Some((Some(first.parse().ok()?), Some(last.parse().ok()?), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_of(value: &str) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_RANGE, HeaderValue::from_str(value).ok()?);
        content_range(&headers)
    }

    #[test]
    fn content_range_forms_are_read() {
        assert_eq!(range_of("bytes 0-99/1000"), Some((Some(0), Some(99), Some(1000))));
        assert_eq!(range_of("bytes 5-9/*"), Some((Some(5), Some(9), None)));
        assert_eq!(range_of("bytes */1000"), Some((None, None, Some(1000))));
        assert_eq!(range_of("bytes x-9/10"), None);
        assert_eq!(range_of("items 0-1/2"), None);
    }
}
