//! The OpenAPI document (utoipa): every route, its bodies, the error envelope with its
//! codes, and the bearer-JWT security scheme. Served at `/openapi.json`, committed at
//! `openapi/openapi.json` (regenerate with `cargo run -q -- openapi > openapi/openapi.json`).

use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vidgate",
        description = "Company gateway for the upstream video API (wan2.6-reference-video-flash). Same paths and \
bodies as the upstream; authenticate with a company JWT or a tenant API key (`Bearer vgk_...`). Every non-2xx \
answer is the error envelope; every answer carries `x-request-id`. Relayed callbacks carry Standard Webhooks \
headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`), signed with the tenant's own key from \
`GET /v1/webhooks/secret`; during a rotation's 24 h the signature header lists `v1,<new> v1,<old>`.",
    ),
    paths(
        crate::routes::generations::create,
        crate::routes::generations::get_task,
        crate::routes::content::content,
        crate::routes::callbacks::upstream_callback,
        crate::routes::uploads::stream,
        crate::routes::uploads::base64,
        crate::routes::uploads::url,
        crate::routes::usage::usage,
        crate::routes::admin::usage,
        crate::routes::admin::ledger,
        crate::routes::admin::list_tenants,
        crate::routes::admin::put_tenant,
        crate::routes::tasks::list,
        crate::routes::quotes::quote,
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::metrics::metrics,
        crate::routes::webhooks::secret,
        crate::routes::webhooks::rotate,
        crate::routes::keys::create,
        crate::routes::keys::list,
        crate::routes::keys::revoke,
    ),
    modifiers(&BearerJwt),
    security(("bearer" = [])),
    tags(
        (name = "tasks", description = "Drop-in upstream routes"),
        (name = "files", description = "Upload proxy to the upstream file host"),
        (name = "usage", description = "Spend: a team's own, and every team's for finance (roles finance/admin)"),
        (name = "admin", description = "Tenant management and tenant API keys (role admin)"),
        (name = "webhooks", description = "The tenant's own key for verifying relayed callbacks (Standard Webhooks)"),
        (name = "callbacks", description = "The upstream's task callbacks (token in the path, no bearer token)"),
        (name = "operations", description = "Health, readiness and metrics (no token)"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `vidgate openapi` prints and `openapi/` holds).
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT or vgk_ API key")
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `POST /v1/videos/generations` body: the upstream's fields, nothing else.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "model": "wan2.6-reference-video-flash",
    "prompt": "character1 walks through a neon-lit street at night",
    "video_urls": ["https://files-api.evolink.ai/files/ref-1.mp4"],
    "aspect_ratio": "16:9", "quality": "720p", "duration": 5,
    "model_params": {"generate_audio": true}
}))]
pub struct CreateTaskRequest {
    /// Only models priced in the gateway's config.
    #[schema(pattern = "^wan2\\.6-reference-video-flash$")]
    pub model: String,
    /// Refer to references as character1..character3, in the order of `video_urls`.
    #[schema(min_length = 1, max_length = 1500, pattern = "\\S")]
    pub prompt: String,
    /// mp4 or mov, 2 to 30 s, at most 100 MB each.
    #[schema(min_items = 1, max_items = 3)]
    pub video_urls: Vec<VideoUrl>,
    #[schema(default = "16:9")]
    pub aspect_ratio: Option<AspectRatio>,
    #[schema(default = "720p")]
    pub quality: Option<Quality>,
    /// Seconds of output.
    #[schema(minimum = 2, maximum = 10, default = 5)]
    pub duration: Option<u32>,
    pub model_params: Option<ModelParams>,
    /// Kept by vidgate and relayed to, never sent upstream; https (or an allowed internal network).
    #[schema(max_length = 2048, pattern = "^https?://[^/?#\\s]+")]
    pub callback_url: Option<String>,
}

/// An http or https URL of an mp4 or mov file.
#[derive(Deserialize, ToSchema)]
#[schema(value_type = String, pattern = "^https?://[^/?#\\s]+")]
pub struct VideoUrl(pub String);

#[derive(Deserialize, ToSchema)]
pub enum AspectRatio {
    #[serde(rename = "16:9")]
    Wide,
    #[serde(rename = "9:16")]
    Tall,
    #[serde(rename = "1:1")]
    Square,
    #[serde(rename = "4:3")]
    Classic,
    #[serde(rename = "3:4")]
    ClassicTall,
}

#[derive(Deserialize, ToSchema)]
pub enum Quality {
    #[serde(rename = "720p")]
    Hd,
    #[serde(rename = "1080p")]
    FullHd,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    /// Audio costs more.
    #[schema(default = true)]
    pub generate_audio: Option<bool>,
}

/// The upstream's task object with the gateway's `vidgate` object; other upstream fields pass through.
#[derive(ToSchema)]
#[schema(example = json!({
    "created": 1764064800, "id": "task-unified-1764064800-ab12cd34", "model": "wan2.6-reference-video-flash",
    "object": "video.generation.task", "progress": 100, "status": "completed", "type": "video",
    "results": ["https://files.example.com/results/task-unified-1764064800-ab12cd34.mp4"],
    "task_info": {"can_cancel": false, "estimated_time": 0},
    "usage": {"billing_rule": "per_second", "credits_reserved": 8.3, "user_group": "default"},
    "vidgate": {"tenant": "marketing", "reservation_id": "rsv_01JDQ8Z3V4X5Y6Z7A8B9C0D1E2", "state": "settled",
                "currency": "USD", "reserved": "0.415000", "charged": "0.405000", "billed_input_ms": 3300,
                "billed_output_ms": 4800, "result_expires_at": "2026-11-26T10:00:00Z",
                "archived": true, "content_url": "/v1/tasks/task-unified-1764064800-ab12cd34/content"}
}))]
pub struct TaskResponse {
    /// Unix seconds.
    pub created: i64,
    /// `task-unified-<unix>-<8 chars>`.
    pub id: String,
    pub model: String,
    pub object: String,
    #[schema(minimum = 0, maximum = 100)]
    pub progress: u8,
    /// `pending`, `processing`, `completed`, `failed`, `cancelled` (other values: still running).
    pub status: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub task_info: Option<TaskInfo>,
    pub usage: Option<serde_json::Value>,
    /// The result mp4 (lives 24 h) when completed.
    pub results: Option<Vec<String>>,
    /// When failed: `{code, message}`.
    pub error: Option<serde_json::Value>,
    pub vidgate: VidgateObject,
}

#[derive(ToSchema)]
pub struct TaskInfo {
    pub can_cancel: bool,
    pub estimated_time: i64,
}

/// What the task costs the caller's tenant. Money: decimal strings with 6 decimals.
#[derive(ToSchema)]
pub struct VidgateObject {
    pub tenant: String,
    pub reservation_id: String,
    /// `reserved` | `settled` | `refunded` | `expired`.
    pub state: String,
    pub currency: String,
    #[schema(example = "0.415000")]
    pub reserved: String,
    /// Once final.
    pub charged: Option<String>,
    pub billed_input_ms: u64,
    /// Once settled.
    pub billed_output_ms: Option<u64>,
    /// Completion + 24 h.
    #[schema(format = DateTime)]
    pub result_expires_at: Option<String>,
    /// Once completed: whether the video is copied into the company's archive (a relayed
    /// callback may say false; `content_url` serves from the upstream's link meanwhile).
    pub archived: Option<bool>,
    /// Once completed: the gateway path of the video, `/v1/tasks/{task_id}/content`.
    #[schema(example = "/v1/tasks/task-unified-1764064800-ab12cd34/content")]
    pub content_url: Option<String>,
}

/// `GET /v1/tasks`: one page of the tenant's tasks, newest first; `next_cursor` fetches the
/// next (null: no more).
#[derive(ToSchema)]
pub struct TaskList {
    pub data: Vec<TaskListRow>,
    pub next_cursor: Option<String>,
}

/// A task as the gateway keeps it: the upstream's task object as last seen (the ending
/// reported when its money moved, else the answer to the create: GET /v1/tasks/{task_id}
/// asks the upstream now) with the current `vidgate` object. A reservation without a task has `id` null and
/// `status` `unknown` (the create's outcome is unknown: the upstream may have made it) or
/// `failed` (the upstream refused the create; nothing was charged).
#[derive(ToSchema)]
pub struct TaskListRow {
    pub id: Option<String>,
    pub status: String,
    pub model: Option<String>,
    /// Unix seconds.
    pub created: Option<i64>,
    pub vidgate: VidgateObject,
}

/// Every non-2xx answer.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "budget_exceeded", "message": "this task needs 0.500000 but the tenant's budget has 0.120000 left this period", "type": "budget_error", "request_id": "req_01JDQ8Z3V4X5Y6Z7A8B9C0D1E2"}}))]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: invalid_request, reference_video_invalid, reference_video_unreachable,
    /// reference_video_forbidden, invalid_callback_url, unauthenticated, budget_exceeded, forbidden,
    /// unknown_tenant, quality_not_allowed, task_not_found, request_in_progress, length_required,
    /// payload_too_large, unsupported_media_type, idempotency_key_reused, rate_limited,
    /// concurrency_limited, upstream_rate_limited, upstream_error, upstream_auth_failed,
    /// upstream_account_exhausted, upstream_outcome_unknown, store_unavailable, upstream_timeout, not_found,
    /// method_not_allowed, key_name_taken, key_not_found.
    pub code: String,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The one field at fault, e.g. `duration`, `video_urls[1]`, `model_params.generate_audio`.
    pub param: Option<String>,
    pub request_id: String,
    /// With `upstream_outcome_unknown` and a create's `upstream_timeout`: the hold kept while the
    /// upstream may have created the task.
    pub reservation_id: Option<String>,
}

/// The answer to an upstream callback.
#[derive(ToSchema)]
pub struct CallbackAck {
    pub received: bool,
}

#[derive(ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub store: String,
    pub keys: String,
}

/// `POST /api/v1/files/upload/stream` form (`Content-Length` required; at most 100 MB).
#[derive(ToSchema)]
pub struct UploadForm {
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    pub upload_path: Option<String>,
    pub file_name: Option<String>,
}

/// `POST /api/v1/files/upload/base64` body.
#[derive(ToSchema)]
pub struct Base64Upload {
    pub base64_data: String,
    pub file_name: Option<String>,
    pub upload_path: Option<String>,
}

/// `POST /api/v1/files/upload/url` body: the file host fetches `file_url` (which must pass
/// the gateway's probe rules and be a usable reference video).
#[derive(ToSchema)]
pub struct UrlUpload {
    #[schema(pattern = "^https?://[^/?#\\s]+")]
    pub file_url: String,
    pub file_name: Option<String>,
    pub upload_path: Option<String>,
}

/// The file host's answer, passed through; `data.file_url` goes into `video_urls`.
#[derive(ToSchema)]
pub struct UploadResponse {
    pub success: bool,
    pub code: Option<i64>,
    pub msg: Option<String>,
    pub data: Option<UploadedFile>,
}

#[derive(ToSchema)]
pub struct UploadedFile {
    pub file_id: String,
    pub file_name: Option<String>,
    pub file_size: Option<u64>,
    pub mime_type: Option<String>,
    pub file_url: String,
    pub download_url: Option<String>,
    pub upload_time: Option<String>,
    /// Files expire after 72 h.
    pub expires_at: Option<String>,
}

/// `GET /v1/admin/ledger` (JSON): one page; `next_cursor` (also the `x-next-cursor` header)
/// fetches the next.
#[derive(ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<crate::reports::LedgerLine<'static>>,
    pub next_cursor: Option<String>,
}

/// A tenant's settings as stored (money as decimal strings; "" = no cap).
#[derive(ToSchema)]
#[schema(example = json!({"id": "marketing", "budget": "500.000000", "period": "month", "creates_per_minute": 60,
    "creates_burst": 10, "reads_per_minute": 600, "reads_burst": 100, "max_concurrent_tasks": 5, "user_budget": "",
    "user_creates_per_minute": 0, "allowed_qualities": ["720p", "1080p"], "alert_webhook_url": ""}))]
pub struct TenantView {
    pub id: String,
    pub budget: String,
    /// `month` | `week` | `day` | `total`.
    pub period: String,
    pub creates_per_minute: u32,
    pub creates_burst: u32,
    pub reads_per_minute: u32,
    pub reads_burst: u32,
    pub max_concurrent_tasks: u32,
    pub user_budget: String,
    pub user_creates_per_minute: u32,
    pub allowed_qualities: Vec<String>,
    /// This tenant's budget alerts also go here; shown as scheme and host only (the rest is
    /// a credential): `https://hooks.example.com/********`; "" when none.
    pub alert_webhook_url: String,
}

#[derive(ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
}

/// `PUT /v1/admin/tenants/{id}` body: any `[[tenants]]` fields; the others are kept.
#[derive(ToSchema)]
#[schema(example = json!({"budget": "750.00", "max_concurrent_tasks": 8}))]
pub struct TenantPatchBody {
    pub id: Option<String>,
    /// Currency units with at most 6 decimals; "" or null removes the cap.
    pub budget: Option<String>,
    pub period: Option<String>,
    pub creates_per_minute: Option<u32>,
    pub creates_burst: Option<u32>,
    pub reads_per_minute: Option<u32>,
    pub reads_burst: Option<u32>,
    pub max_concurrent_tasks: Option<u32>,
    pub user_budget: Option<String>,
    pub user_creates_per_minute: Option<u32>,
    pub allowed_qualities: Option<Vec<String>>,
    /// https URL (callback egress rules) for this tenant's budget alerts; "" or null removes it.
    pub alert_webhook_url: Option<String>,
}

/// A video file's bytes (`GET /v1/tasks/{task_id}/content`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct VideoFile(pub Vec<u8>);
