//! Sample reference videos anyone may fetch (no key), so a gateway run against the mock has a
//! real video to point `video_urls` at.

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};

use super::files::serve_bytes;
use super::mp4::mp4_with_duration;

/// The path of the 4 s sample (`vidgate mock-upstream` serves it at this path).
pub const REFERENCE_4S: &str = "/samples/reference-4s.mp4";

/// `GET|HEAD /samples/reference-4s.mp4`: a valid 4 s mp4 (one video track), `Range` supported.
pub async fn reference_4s(req: HttpRequest) -> HttpResponse {
    serve_bytes(&req, Bytes::from(mp4_with_duration(4000)), "video/mp4")
}
