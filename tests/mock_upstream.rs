//! End-to-end tests of the mock upstream over HTTP on 127.0.0.1, through its public API only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use reqwest::StatusCode;
use serde_json::{Value, json};
use vidgate::mock_upstream::{MockOptions, MockServer, mp4_with_duration};

const KEY: &str = "sk-evo-mock";
const MODEL: &str = "wan2.6-reference-video-flash";

async fn mock_with(tweak: impl FnOnce(&mut MockOptions)) -> MockServer {
    let mut options = MockOptions {
        pending_ms: 30,
        processing_ms: 60,
        ..MockOptions::default()
    };
    tweak(&mut options);
    MockServer::start(options).await.expect("mock starts")
}

async fn mock() -> MockServer {
    mock_with(|_| {}).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn body(prompt: &str) -> Value {
    json!({"model": MODEL, "prompt": prompt, "video_urls": ["https://cdn.example.com/ref.mp4"], "duration": 5})
}

async fn create(mock: &MockServer, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/videos/generations", mock.base_url()))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn create_ok(mock: &MockServer, body: &Value) -> Value {
    let response = create(mock, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn task(mock: &MockServer, id: &str) -> Value {
    let url = format!("{}/v1/tasks/{id}", mock.base_url());
    let response = client().get(url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn wait_final(mock: &MockServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let task = task(mock, id).await;
        if !matches!(task["status"].as_str(), Some("pending" | "processing")) {
            return task;
        }
        assert!(Instant::now() < deadline, "task {id} never ended: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json::<Value>().await.unwrap()["error"].clone())
}

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
}

/// Walks the top-level boxes to `moov`, then to `mvhd`, and returns its duration in ms.
fn mp4_duration_ms(file: &[u8]) -> u64 {
    let find = |data: &[u8], kind: &[u8]| -> (usize, usize) {
        let mut at = 0;
        while at + 8 <= data.len() {
            let size = be32(data, at) as usize;
            assert!(size >= 8, "bad box size");
            if &data[at + 4..at + 8] == kind {
                return (at + 8, at + size);
            }
            at += size;
        }
        panic!("no {} box", String::from_utf8_lossy(kind));
    };
    assert_eq!(&file[4..8], b"ftyp");
    let (start, end) = find(file, b"moov");
    let moov = &file[start..end];
    let (start, _) = find(moov, b"mvhd");
    let mvhd = &moov[start..];
    u64::from(be32(mvhd, 16)) * 1000 / u64::from(be32(mvhd, 12))
}

#[tokio::test]
async fn a_task_goes_pending_then_processing_then_completed_with_a_downloadable_mp4() {
    let mock = mock_with(|o| {
        o.pending_ms = 200;
        o.processing_ms = 600;
        o.output_offset_ms = -200;
    })
    .await;
    let request = body("character1 walks [unrelated brackets]");
    let created = create_ok(&mock, &request).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = id.strip_prefix("task-unified-").unwrap().split('-').collect();
    assert!(parts[0].parse::<i64>().is_ok() && parts[1].len() == 8, "{id}");
    assert_eq!(created["object"], "video.generation.task");
    assert_eq!(
        (&created["status"], &created["progress"], &created["type"]),
        (&json!("pending"), &json!(0), &json!("video"))
    );
    assert_eq!(created["model"], MODEL);
    assert!(created["created"].is_i64());
    assert_eq!(created["task_info"]["can_cancel"], true);
    assert!(created["task_info"]["estimated_time"].is_u64());
    assert_eq!(created["usage"]["billing_rule"], "per_second");
    assert!(created["usage"]["credits_reserved"].is_number());
    assert_eq!(created["usage"]["user_group"], "default");
    assert_eq!(task(&mock, &id).await["status"], "pending");
    assert_eq!(mock.stats().open_tasks, 1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let processing = task(&mock, &id).await;
    assert_eq!(processing["status"], "processing");
    let progress = processing["progress"].as_u64().unwrap();
    assert!((1..=99).contains(&progress), "{progress}");

    let done = wait_final(&mock, &id).await;
    assert_eq!((&done["status"], &done["progress"]), (&json!("completed"), &json!(100)));
    let url = done["results"][0].as_str().unwrap();
    assert_eq!(url, format!("{}/files/results/{id}.mp4", mock.base_url()));
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    let file = response.bytes().await.unwrap();
    assert_eq!(mp4_duration_ms(&file), 4800);
    assert_eq!(file.as_ref(), mp4_with_duration(4800));

    let stats = mock.stats();
    assert_eq!((stats.creates, stats.tasks_created, stats.open_tasks), (1, 1, 0));
    assert!(stats.queries >= 3);
    assert_eq!(stats.last_create_body, Some(request));
    mock.stop().await;
}

#[tokio::test]
async fn requests_without_the_right_key_get_401_in_the_upstream_error_shape() {
    let mock = mock().await;
    let base = mock.base_url();
    for key in [None, Some("sk-evo-wrong")] {
        let requests = [
            client().post(format!("{base}/v1/videos/generations")).json(&body("x")),
            client().get(format!("{base}/v1/tasks/task-unified-1-abcdefgh")),
            client()
                .post(format!("{base}/api/v1/files/upload/base64"))
                .json(&json!({"base64_data": "aGk="})),
            client().post(format!("{base}/api/v1/files/upload/stream")),
            client().get(format!("{base}/v1/unknown")),
        ];
        for request in requests {
            let request = match key {
                Some(key) => request.bearer_auth(key),
                None => request,
            };
            let (status, error) = error_of(request.send().await.unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(error["type"], "authentication_error");
            assert!(error["code"].is_string() && error["message"].is_string());
            assert_eq!(
                (&error["param"], &error["fallback_suggestion"]),
                (&Value::Null, &Value::Null)
            );
        }
    }
    let stats = mock.stats();
    assert_eq!((stats.creates, stats.tasks_created, stats.uploads), (2, 0, 0));
    assert_eq!(stats.last_create_body, None);
    mock.stop().await;
}

#[tokio::test]
async fn the_fail_and_cancel_markers_end_tasks_with_their_error_codes() {
    let mock = mock().await;
    let failed = create_ok(&mock, &body("character1 [mock:fail] jumps")).await;
    let cancelled = create_ok(&mock, &body("[mock:cancel]")).await;
    let failed = wait_final(&mock, failed["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "generation_failed_no_content");
    assert!(failed["error"]["message"].is_string() && failed.get("results").is_none());
    let cancelled = wait_final(&mock, cancelled["id"].as_str().unwrap()).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["error"]["code"], "request_cancelled");
    let url = format!(
        "{}/files/results/{}.mp4",
        mock.base_url(),
        failed["id"].as_str().unwrap()
    );
    assert_eq!(client().get(url).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    mock.stop().await;
}

#[tokio::test]
async fn the_out_marker_and_the_offset_set_the_generated_length() {
    let mock = mock_with(|o| o.output_offset_ms = -4900).await;
    let marked = create_ok(&mock, &body("[mock:out=4.8] a cat")).await;
    let clamped = create_ok(&mock, &body("a dog")).await;
    for (task_id, expected) in [(&marked["id"], 4800), (&clamped["id"], 500)] {
        let done = wait_final(&mock, task_id.as_str().unwrap()).await;
        let file = client()
            .get(done["results"][0].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(mp4_duration_ms(&file), expected);
    }
    mock.stop().await;
}

#[tokio::test]
async fn the_slow_marker_keeps_a_task_processing_longer() {
    let mock = mock_with(|o| {
        o.pending_ms = 10;
        o.processing_ms = 50;
    })
    .await;
    let started = Instant::now();
    let created = create_ok(&mock, &body("[mock:slow=0.6]")).await;
    let id = created["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(task(&mock, id).await["status"], "processing");
    assert_eq!(wait_final(&mock, id).await["status"], "completed");
    assert!(started.elapsed() >= Duration::from_millis(650));
    mock.stop().await;
}

#[tokio::test]
async fn the_hang_marker_delays_the_answer_but_the_task_is_created_anyway() {
    let mock = mock().await;
    let started = Instant::now();
    let created = create_ok(&mock, &body("[mock:hang=0.4]")).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(created["status"], "pending");

    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let sent = impatient
        .post(format!("{}/v1/videos/generations", mock.base_url()))
        .bearer_auth(KEY)
        .json(&body("[mock:hang=3]"))
        .send()
        .await;
    assert!(sent.is_err_and(|error| error.is_timeout()));
    assert_eq!(mock.stats().tasks_created, 2);
    mock.stop().await;
}

#[tokio::test]
async fn the_http_marker_answers_that_error_and_creates_no_task() {
    let mock = mock().await;
    let cases = [
        (429, "rate_limit_error"),
        (402, "insufficient_quota_error"),
        (403, "permission_error"),
        (500, "internal_server_error"),
        (502, "upstream_error"),
        (503, "service_unavailable_error"),
    ];
    for (code, kind) in cases {
        let response = create(&mock, &body(&format!("x [mock:http={code}]"))).await;
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let (status, error) = error_of(response).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(error["type"], kind);
        assert!(!error["code"].is_null());
        if code == 429 {
            assert_eq!(retry_after.as_deref(), Some("60"));
            assert!(error["message"].as_str().unwrap().contains("retry after 60 seconds"));
        }
    }
    let stats = mock.stats();
    assert_eq!((stats.creates, stats.tasks_created), (6, 0));
    mock.stop().await;
}

#[tokio::test]
async fn the_after_marker_creates_the_task_then_answers_as_broken() {
    let mock = mock().await;
    for code in [500, 502, 504] {
        let response = create(&mock, &body(&format!("x [mock:after={code}]"))).await;
        assert_eq!(response.status().as_u16(), code);
    }
    let response = create(&mock, &body("x [mock:after=noid]")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let task: Value = response.json().await.unwrap();
    assert!(task.get("id").is_none() && task["status"] == "pending", "{task}");
    let response = create(&mock, &body("x [mock:after=huge]")).await;
    assert!(response.bytes().await.unwrap().len() > 2 << 20);
    let sent = client()
        .post(format!("{}/v1/videos/generations", mock.base_url()))
        .bearer_auth(KEY)
        .json(&body("x [mock:after=reset]"))
        .send()
        .await;
    match sent {
        Ok(response) => assert!(response.bytes().await.is_err(), "the body breaks off"),
        Err(error) => assert!(!error.is_connect(), "the request was sent: {error}"),
    }
    let stats = mock.stats();
    assert_eq!((stats.creates, stats.tasks_created), (6, 6), "every task was created");
    mock.stop().await;
}

#[tokio::test]
async fn invalid_create_bodies_get_400_naming_the_field() {
    let mock = mock().await;
    let mut cases = Vec::new();
    let mut long = body("x");
    long["duration"] = json!(11);
    cases.push((long, json!("duration")));
    let mut urls = body("x");
    urls["video_urls"] = json!(["https://a.example/1.mp4", "file:///etc/passwd"]);
    cases.push((urls, json!("video_urls[1]")));
    let mut callback = body("x");
    callback["callback_url"] = json!("http://127.0.0.1:9/cb");
    cases.push((callback, json!("callback_url")));
    cases.push((body("[mock:out=soon]"), json!("prompt")));
    cases.push((body(&"p".repeat(1501)), json!("prompt")));
    for (request, param) in cases {
        let (status, error) = error_of(create(&mock, &request).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}");
        assert_eq!(
            (&error["type"], &error["param"]),
            (&json!("invalid_request_error"), &param)
        );
    }
    let malformed = client()
        .post(format!("{}/v1/videos/generations", mock.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(malformed).await;
    assert_eq!((status, &error["param"]), (StatusCode::BAD_REQUEST, &Value::Null));

    let mut tolerated = body("x");
    tolerated["seed"] = json!(7);
    tolerated["negative_prompt"] = json!("blur");
    create_ok(&mock, &tolerated).await;
    assert_eq!(mock.stats().tasks_created, 1);
    mock.stop().await;
}

#[tokio::test]
async fn local_callbacks_are_accepted_only_when_allowed() {
    let mock = mock_with(|o| o.allow_local_callbacks = true).await;
    let mut request = body("x");
    request["callback_url"] = json!("http://127.0.0.1:9/cb");
    create_ok(&mock, &request).await;
    mock.stop().await;
}

#[tokio::test]
async fn task_ids_are_checked_then_looked_up() {
    let mock = mock().await;
    let url = |id: &str| format!("{}/v1/tasks/{id}", mock.base_url());
    let (status, error) = error_of(client().get(url("abc")).bearer_auth(KEY).send().await.unwrap()).await;
    assert_eq!(
        (status, &error["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_task_id"))
    );
    let unknown = client()
        .get(url("task-unified-1700000000-abcdefgh"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(unknown).await;
    assert_eq!(
        (status, &error["type"]),
        (StatusCode::NOT_FOUND, &json!("not_found_error"))
    );
    mock.stop().await;
}

#[tokio::test]
async fn a_callback_is_retried_after_1_and_2_seconds_until_the_receiver_accepts() {
    let arrivals: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
    let recorded = arrivals.clone();
    let receiver = HttpServer::new(move || {
        let recorded = recorded.clone();
        App::new().route(
            "/hook",
            web::post().to(move |body: web::Json<Value>| {
                let mut arrivals = recorded.lock().unwrap();
                arrivals.push((Instant::now(), body.into_inner()));
                let ok = arrivals.len() >= 3;
                async move {
                    if ok {
                        HttpResponse::Ok().finish()
                    } else {
                        HttpResponse::InternalServerError().finish()
                    }
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let hook = format!("http://{}/hook", receiver.addrs()[0]);
    let receiver = receiver.run();
    let receiver_handle = receiver.handle();
    tokio::spawn(receiver);

    let mock = mock_with(|o| o.allow_local_callbacks = true).await;
    let mut request = body("x");
    request["callback_url"] = json!(hook);
    let id = create_ok(&mock, &request).await["id"].clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while arrivals.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "callbacks did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 3);
    assert!(arrivals[1].0 - arrivals[0].0 >= Duration::from_millis(950));
    assert!(arrivals[2].0 - arrivals[1].0 >= Duration::from_millis(1950));
    for (_, task) in &arrivals {
        assert_eq!((&task["id"], &task["status"]), (&id, &json!("completed")));
    }
    assert_eq!(mock.stats().callbacks_sent, 3);
    mock.stop().await;
    receiver_handle.stop(false).await;
}

#[tokio::test]
async fn result_files_support_range_requests_and_head() {
    // Long enough that "before completion" holds on a busy machine.
    let mock = mock_with(|o| o.processing_ms = 1500).await;
    let created = create_ok(&mock, &body("x")).await;
    let id = created["id"].as_str().unwrap();
    let early = format!("{}/files/results/{id}.mp4", mock.base_url());
    assert_eq!(
        client().get(&early).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let url = wait_final(&mock, id).await["results"][0].as_str().unwrap().to_owned();
    let full = mp4_with_duration(5000);
    let len = full.len();

    let part = client().get(&url).header("range", "bytes=0-7").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 0-7/{len}").as_str());
    assert_eq!(part.headers()["content-type"], "video/mp4");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &full[..8]);

    let tail = client().get(&url).header("range", "bytes=-4").send().await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &full[len - 4..]);

    let beyond = client()
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers()["content-range"], format!("bytes */{len}").as_str());

    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], len.to_string().as_str());
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    assert!(head.bytes().await.unwrap().is_empty());
    mock.stop().await;
}

/// Sends a file host request with the key; returns the status and the JSON body.
async fn upload(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.bearer_auth(KEY).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// A multipart body built by hand (reqwest's `multipart` feature is not enabled).
fn multipart(file: &[u8], file_name: &str) -> (String, Vec<u8>) {
    let boundary = "vidgate-test-boundary-7d1f";
    let mut out = Vec::new();
    let text = |name: &str, value: &str| {
        let part = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n");
        part.into_bytes()
    };
    out.extend(text("upload_path", "tests/refs"));
    out.extend(text("file_name", file_name));
    out.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes(),
    );
    out.extend_from_slice(file);
    out.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    (format!("multipart/form-data; boundary={boundary}"), out)
}

#[tokio::test]
async fn uploads_round_trip_through_the_file_host() {
    use base64::Engine;
    let mock = mock().await;
    let base = mock.base_url();
    let video = mp4_with_duration(3000);

    let (content_type, multipart_body) = multipart(&video, "ref.mp4");
    let stream = client()
        .post(format!("{base}/api/v1/files/upload/stream"))
        .header("content-type", content_type)
        .body(multipart_body);
    let (status, answer) = upload(stream).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (&answer["success"], &answer["code"], &answer["msg"]),
        (&json!(true), &json!(200), &json!("ok"))
    );
    let data = &answer["data"];
    assert_eq!(
        (&data["file_name"], &data["mime_type"]),
        (&json!("ref.mp4"), &json!("video/mp4"))
    );
    assert_eq!(data["file_size"], video.len());
    let file_url = data["file_url"].as_str().unwrap().to_owned();
    assert!(file_url.starts_with(&format!("{base}/files/uploads/")));
    assert!(data["file_id"].is_string() && data["download_url"].is_string());
    let uploaded = chrono::DateTime::parse_from_rfc3339(data["upload_time"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(data["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - uploaded, chrono::TimeDelta::hours(72));
    let fetched = client().get(&file_url).send().await.unwrap();
    assert_eq!(fetched.headers()["content-type"], "video/mp4");
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), video.as_slice());
    let part = client()
        .get(&file_url)
        .header("range", "bytes=4-7")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"ftyp");

    let encoded = base64::engine::general_purpose::STANDARD.encode(b"hello \x00\xff world");
    let request = client()
        .post(format!("{base}/api/v1/files/upload/base64"))
        .json(&json!({"base64_data": encoded, "file_name": "note.txt"}));
    let (status, answer) = upload(request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["mime_type"], "text/plain");
    let url = answer["data"]["file_url"].as_str().unwrap();
    assert_eq!(
        client().get(url).send().await.unwrap().bytes().await.unwrap().as_ref(),
        b"hello \x00\xff world"
    );

    let request = client()
        .post(format!("{base}/api/v1/files/upload/url"))
        .json(&json!({"file_url": file_url}));
    let (status, answer) = upload(request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (&answer["data"]["file_size"], &answer["data"]["mime_type"]),
        (&json!(video.len()), &json!("video/mp4"))
    );

    let outside = json!({"file_url": "https://cdn.example.com/ref.mp4"});
    let request = client().post(format!("{base}/api/v1/files/upload/url")).json(&outside);
    let (status, answer) = upload(request).await;
    assert!(!status.is_success());
    assert_eq!(answer["success"], false);
    assert!(answer["code"].is_number() && answer["msg"].is_string());

    let request = client()
        .post(format!("{base}/api/v1/files/upload/base64"))
        .json(&json!({"base64_data": "!!"}));
    let (status, answer) = upload(request).await;
    assert_eq!((status, &answer["success"]), (StatusCode::BAD_REQUEST, &json!(false)));

    assert_eq!(mock.stats().uploads, 3);
    mock.stop().await;
}

#[tokio::test]
async fn the_stats_endpoint_serves_the_counters_as_json() {
    let mock = mock().await;
    create_ok(&mock, &body("x")).await;
    let stats: Value = client()
        .get(format!("{}/_mock/stats", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&stats["creates"], &stats["tasks_created"], &stats["open_tasks"]),
        (&json!(1), &json!(1), &json!(1))
    );
    for field in ["queries", "uploads", "callbacks_sent"] {
        assert_eq!(stats[field], 0, "{field}");
    }
    assert_eq!(stats["last_create_body"], body("x"));
    mock.stop().await;
}

#[tokio::test]
async fn two_mocks_run_side_by_side_on_their_own_ports() {
    let (a, b) = (mock().await, mock().await);
    assert_ne!(a.addr().port(), b.addr().port());
    assert_eq!(a.base_url(), format!("http://{}", a.addr()));
    a.stop().await;
    let created = create_ok(&b, &body("x")).await;
    assert!(created["id"].as_str().unwrap().starts_with("task-unified-"));
    drop(b);
}
