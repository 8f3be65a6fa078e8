//! Reference videos are measured before any money is held, results are measured at
//! settlement, and the upload proxy streams to the file host with its size rules.

use std::io::{Read, Write};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, assert_error, quick_mock, spawn_app, spawn_app_with, upload_reference};

#[tokio::test]
async fn the_hold_uses_the_measured_reference_and_the_charge_the_measured_result() {
    let app = spawn_app(Backend::Embedded).await;
    let short = upload_reference(&app.mock, 3300).await;
    let body = json!({"model": crate::helpers::MODEL, "prompt": "character1 [mock:out=4.8]", "video_urls": [short], "duration": 5});
    let response = app.post_create(&app.token("team-a"), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let created: Value = response.json().await.expect("json");
    // 3.3 s in + 5 s requested out at 0.05/s.
    assert_eq!(created["vidgate"]["reserved"], "0.415000");
    assert_eq!(created["vidgate"]["billed_input_ms"], 3300);
    let done = app.wait_final("team-a", created["id"].as_str().expect("id")).await;
    // Settled on the 4.8 s actually generated: 8.1 s × 0.05.
    assert_eq!(done["vidgate"]["billed_output_ms"], 4800);
    assert_eq!(done["vidgate"]["charged"], "0.405000");
}

#[tokio::test]
async fn a_reference_over_30_seconds_is_refused_naming_it_before_anything_is_held() {
    let app = spawn_app(Backend::Embedded).await;
    let long = upload_reference(&app.mock, 31_200).await;
    let body = json!({"model": crate::helpers::MODEL, "prompt": "x", "video_urls": [app.reference_url(), long]});
    let response = app.post_create(&app.token("team-a"), &body).await;
    let error = assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "reference_video_invalid",
        Some("video_urls[1]"),
    )
    .await;
    assert!(
        error["error"]["message"].as_str().is_some_and(|m| m.contains("31.2 s")),
        "{error}"
    );
    assert_eq!(app.mock.stats().creates, 0);
}

#[tokio::test]
async fn a_loopback_reference_is_forbidden_unless_private_networks_are_allowed() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.probe.allow_private_networks = false
    })
    .await;
    let response = app.post_create(&app.token("team-a"), &app.create_body("x")).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "reference_video_forbidden",
        Some("video_urls[0]"),
    )
    .await;
    let missing = json!({"model": crate::helpers::MODEL, "prompt": "x",
        "video_urls": [format!("{}/files/uploads/none.mp4", app.mock.base_url())]});
    let app = spawn_app(Backend::Embedded).await;
    let response = app.post_create(&app.token("team-a"), &missing).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "reference_video_unreachable",
        Some("video_urls[0]"),
    )
    .await;
    assert_eq!(app.mock.stats().creates, 0);
}

fn multipart(video: &[u8]) -> (String, Vec<u8>) {
    let boundary = "vidgate-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ref.mp4\"\r\nContent-Type: video/mp4\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(video);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn a_multipart_upload_is_streamed_to_the_file_host() {
    let app = spawn_app(Backend::Embedded).await;
    let (content_type, body) = multipart(&vidgate::mock_upstream::mp4_with_duration(4000));
    let response = app
        .client
        .post(format!("{}/api/v1/files/upload/stream", app.base))
        .bearer_auth(app.token("team-a"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["success"], true, "{answer}");
    let url = answer["data"]["file_url"].as_str().expect("file_url");
    // The uploaded file works as a reference video.
    let create = json!({"model": crate::helpers::MODEL, "prompt": "x", "video_urls": [url]});
    assert_eq!(
        app.post_create(&app.token("team-a"), &create).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_upload_without_length_gets_411_and_one_over_100_mb_gets_413_before_forwarding() {
    let app = spawn_app(Backend::Embedded).await;
    let uploads_before = app.mock.stats().uploads;
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"--b\r\n\r\n--b--\r\n"),
    )]));
    let response = app
        .client
        .post(format!("{}/api/v1/files/upload/stream", app.base))
        .bearer_auth(app.token("team-a"))
        .header("content-type", "multipart/form-data; boundary=b")
        .body(chunked)
        .send()
        .await
        .expect("answer");
    assert_error(response, StatusCode::LENGTH_REQUIRED, "length_required", None).await;

    // Declare 101 MB and send none of it: the answer comes from the headers alone.
    let token = app.token("team-a");
    let addr = app.base.trim_start_matches("http://").to_string();
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let request = format!(
            "POST /api/v1/files/upload/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 101000000\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("raw request");
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("payload_too_large"));
    assert_eq!(
        app.mock.stats().uploads,
        uploads_before,
        "the file host received nothing"
    );
}

#[tokio::test]
async fn a_url_upload_passes_the_probe_rules_first() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.probe.allow_private_networks = false
    })
    .await;
    let response = app
        .client
        .post(format!("{}/api/v1/files/upload/url", app.base))
        .bearer_auth(app.token("team-a"))
        .json(&json!({"file_url": app.reference_url()}))
        .send()
        .await
        .expect("answer");
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "reference_video_forbidden",
        Some("file_url"),
    )
    .await;
    assert_eq!(app.mock.stats().uploads, 1, "only the harness's own reference upload");

    let app = spawn_app(Backend::Embedded).await;
    let response = app
        .client
        .post(format!("{}/api/v1/files/upload/url", app.base))
        .bearer_auth(app.token("team-a"))
        .json(&json!({"file_url": app.reference_url()}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["success"], true, "{answer}");
}
