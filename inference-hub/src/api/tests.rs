use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use schemas::ReadingColumns;
use schemas::envelope;
use tower::ServiceExt;

use super::*;
use crate::config::HubConfig;

async fn test_hub(dir: &std::path::Path) -> crate::hub::HubHandle {
    let mut cfg = HubConfig::for_dir_with_model("api", dir, &crate::test_models("novelty"));
    cfg.mqtt.enabled = false;
    crate::hub::start(cfg).await.unwrap()
}

fn router_for(hub: &crate::hub::HubHandle) -> Router {
    router(ApiContext::new(
        hub.intake.clone(),
        Arc::clone(&hub.state),
        Arc::clone(&hub.stats),
    ))
}

fn envelope_bytes(seq: u64, rows: usize) -> Vec<u8> {
    let mut cols = ReadingColumns::default();
    for i in 0..rows {
        cols.push(
            "pump-7",
            "temp",
            1_700_000_000_000_000 + i as i64 * 1_000_000,
            20.0 + i as f64,
        );
    }
    envelope::encode("gw-api", 42, seq, &cols.finish())
        .unwrap()
        .1
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into(),
    ));
    (status, json)
}

fn post(bytes: Vec<u8>) -> Request<Body> {
    Request::post("/v1/batches")
        .body(Body::from(bytes))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn batch_is_acknowledged_durable_once_then_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);
    let (status, body) = call(&app, post(envelope_bytes(1, 10))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "durable");
    assert_eq!(
        (body["gateway"].as_str(), body["seq"].as_u64()),
        (Some("gw-api"), Some(1))
    );
    let (status, body) = call(&app, post(envelope_bytes(1, 10))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "duplicate");
    assert_eq!(
        hub.stats
            .batches_durable
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn bad_batches_get_the_status_their_fault_deserves() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);

    let (status, body) = call(&app, post(b"garbage".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "unreadable_batch");

    // Valid header and checksum, but the header lies about the row count.
    let mut forged = envelope_bytes(2, 5);
    let at = envelope::PREAMBLE_LEN + 1 + "gw-api".len() + 16;
    forged[at..at + 4].copy_from_slice(&6u32.to_le_bytes());
    let crc = crc32c::crc32c(&forged[envelope::PREAMBLE_LEN..]);
    forged[12..16].copy_from_slice(&crc.to_le_bytes());
    let (status, body) = call(&app, post(forged)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["seq"], 2);

    let too_big = vec![0u8; hub.intake.limits().max_envelope_bytes + 1];
    let (status, _) = call(&app, post(too_big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    hub.shutdown().await;
}

#[tokio::test]
async fn devices_health_metrics_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);
    call(&app, post(envelope_bytes(1, 30))).await;

    let mut devices = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = call(&app, get("/v1/devices")).await;
        if body["devices"].as_array().is_some_and(|d| !d.is_empty()) {
            devices = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let device = &devices["devices"][0];
    assert_eq!(device["device"], "pump-7");
    assert_eq!(device["status"], "warming_up");
    assert_eq!(device["metrics"][0]["metric"], "temp");
    assert_eq!(device["metrics"][0]["value"], 49.0);

    let (status, body) = call(&app, get("/health")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let resp = app.clone().oneshot(get("/metrics")).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("hub_batches_durable_total 1"), "{text}");

    let (status, body) = call(&app, get("/v1/anomalies?limit=0")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "bad_limit");
    let (status, _) = call(&app, get("/v1/anomalies?since=yesterday")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = call(&app, get("/v1/anomalies?since=0&device=pump-7")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["anomalies"].as_array().unwrap().is_empty());
    let (status, body) = call(&app, get("/v1/nope")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn acknowledged_batches_survive_a_restart_without_being_archived_twice() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);
    for seq in 1..=5 {
        call(&app, post(envelope_bytes(seq, 20))).await;
    }
    hub.shutdown().await;

    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);
    // A gateway retrying after the restart is told "duplicate".
    let (_, body) = call(&app, post(envelope_bytes(3, 20))).await;
    assert_eq!(body["status"], "duplicate");
    call(&app, post(envelope_bytes(6, 20))).await;
    let root = hub.archive_root.clone();
    hub.shutdown().await;
    let rows: usize = crate::archive::read_table(&root, crate::archive::Table::Scored)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 6 * 20);
}

fn anomaly(i: u64, device: &str) -> crate::scoring::AnomalyEvent {
    crate::scoring::AnomalyEvent {
        id: 0,
        device: device.into(),
        metric: "temp".into(),
        ts: String::new(),
        ts_us: 1_700_000_000_000_000 + i as i64 * 1_000_000,
        value: i as f64,
        score: 10.0,
        threshold: 4.0,
        severity: 1.0 + (i % 5) as f64,
        window_start_us: 0,
        model_id: "m".into(),
        model_version: "1".into(),
        gateway: "gw".into(),
        seq: i,
        expected: None,
        expected_low: None,
        expected_high: None,
        contributions: None,
    }
}

#[tokio::test]
async fn anomalies_page_with_an_opaque_cursor_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let events: Vec<_> = (0..25)
        .map(|i| anomaly(i, if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    hub.state.record_events(events);
    let app = router_for(&hub);
    let mut seen = Vec::new();
    let mut uri = "/v1/anomalies?limit=10".to_string();
    loop {
        let (status, body) = call(&app, get(&uri)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = body["anomalies"].as_array().unwrap();
        seen.extend(page.iter().map(|e| e["seq"].as_u64().unwrap()));
        match body["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/anomalies?limit=10&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..25).rev().collect::<Vec<u64>>(),
        "newest first, each once"
    );
    let (_, body) = call(&app, get("/v1/anomalies?device=a&min_severity=4")).await;
    let filtered = body["anomalies"].as_array().unwrap();
    assert!(!filtered.is_empty());
    assert!(
        filtered
            .iter()
            .all(|e| e["device"] == "a" && e["severity"].as_f64().unwrap() >= 4.0)
    );
    let (status, body) = call(&app, get("/v1/anomalies?cursor=zzz")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    hub.shutdown().await;
}

/// Reads SSE frames from a live socket until `n` events arrived.
async fn sse_events(mut resp: reqwest::Response, n: usize) -> Vec<(u64, String, String)> {
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (0, String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().into();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim().into();
                }
            }
            if id > 0 {
                out.push((id, kind, data));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_delivers_live_events_and_a_reconnect_resumes_after_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let url = format!("http://{}/v1/stream?types=anomaly", hub.http_addr);
    let client = reqwest::Client::new();
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let state = Arc::clone(&hub.state);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        state.record_events((0..3).map(|i| anomaly(i, "a")).collect());
    });
    let first = sse_events(resp, 3).await;
    assert!(first.iter().all(|(_, kind, _)| kind == "anomaly"));
    let last = first[1].0;
    // Two more while the client is away; it reconnects after the second event.
    hub.state
        .record_events((3..5).map(|i| anomaly(i, "a")).collect());
    let resp = client
        .get(&url)
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let resumed = sse_events(resp, 3).await;
    let seqs: Vec<u64> = resumed
        .iter()
        .map(|(_, _, d)| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![2, 3, 4], "nothing missed, nothing repeated");
    let (status, _) = call(&router_for(&hub), get("/v1/stream?types=bogus")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    hub.shutdown().await;
}

#[tokio::test]
async fn tokens_scopes_rate_limits_and_cors_guard_every_route_but_health() {
    use access::{Access, Scope, TokenConfig};
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let token = |name: &str, scopes: Vec<Scope>, rate: Option<f64>| TokenConfig {
        name: name.into(),
        token: Some(iot_tls::Secret::new(format!("secret-{name}"))),
        token_file: None,
        gateway: None,
        token_sha256: None,
        scopes,
        rate_limit: rate,
    };
    let hashed = TokenConfig {
        token: None,
        token_sha256: Some(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(), // ""
        ),
        ..token("empty", vec![Scope::Admin], None)
    };
    let access = Access::new(
        &[
            token("reader", vec![Scope::Read], Some(2.0)),
            token("gateway", vec![Scope::Ingest], None),
            hashed,
        ],
        vec!["https://dash.example".into()],
        Duration::from_secs(5),
    );
    let app = router(
        ApiContext::new(
            hub.intake.clone(),
            Arc::clone(&hub.state),
            Arc::clone(&hub.stats),
        )
        .with_access(Arc::new(access.unwrap())),
    );
    let with = |mut req: Request<Body>, t: &str| {
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        req
    };
    assert_eq!(
        call(&app, get("/health")).await.0,
        StatusCode::OK,
        "health stays open"
    );
    let resp = app.clone().oneshot(get("/v1/devices")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(
        call(&app, with(get("/v1/devices"), "wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, with(get("/v1/devices"), "secret-reader"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, with(post(envelope_bytes(1, 3)), "secret-reader"))
            .await
            .0,
        StatusCode::FORBIDDEN,
        "read scope cannot ingest"
    );
    assert_eq!(
        call(&app, with(post(envelope_bytes(1, 3)), "secret-gateway"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, with(get("/v1/devices"), "secret-gateway"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // The reader's bucket (2/s, burst 2) is spent: 429 with Retry-After.
    let _ = call(&app, with(get("/v1/devices"), "secret-reader")).await;
    let resp = app
        .clone()
        .oneshot(with(get("/v1/devices"), "secret-reader"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    // A token configured by its SHA-256 only.
    assert_eq!(
        call(&app, with(get("/v1/anomalies"), "")).await.0,
        StatusCode::OK
    );
    // CORS: preflight and the allowed origin echoed; others get nothing.
    let mut pre = Request::builder()
        .method("OPTIONS")
        .uri("/v1/devices")
        .body(Body::empty())
        .unwrap();
    pre.headers_mut()
        .insert(header::ORIGIN, "https://dash.example".parse().unwrap());
    let resp = app.clone().oneshot(pre).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example"
    );
    let mut other = get("/health");
    other
        .headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    let resp = app.clone().oneshot(other).await.unwrap();
    assert!(
        !resp
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
    hub.shutdown().await;
}

#[test]
fn a_hub_listening_beyond_loopback_without_tokens_is_refused() {
    let err = schemas::settings::load_str::<HubConfig>(
        "hub-id = 'h'\ndata-dir = '/tmp/h'\n[http]\nlisten = '0.0.0.0:8080'\n",
        crate::config::ENV_PREFIX,
        Vec::new(),
    )
    .unwrap_err();
    assert!(err.0.iter().any(|p| p.path == "http.tokens"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_over_a_range_merge_the_archive_with_memory_and_downsample() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        HubConfig::for_dir_with_model("range", dir.path(), &crate::test_models("novelty"));
    cfg.mqtt.enabled = false;
    cfg.archive.max_file_age = Duration::from_millis(100);
    let hub = crate::hub::start(cfg).await.unwrap();
    let app = router(
        ApiContext::new(
            hub.intake.clone(),
            Arc::clone(&hub.state),
            Arc::clone(&hub.stats),
        )
        .with_archive(hub.archive_root.clone()),
    );
    let t0 = 1_700_000_000_000_000i64 - 1_700_000_000_000_000 % 3_600_000_000; // an hour start
    for seq in 0..3u64 {
        let mut cols = ReadingColumns::default();
        for i in 0..100 {
            let ts = t0 + (seq as i64 * 100 + i) * 60_000_000;
            cols.push("pump-7", "temp", ts, 20.0 + (i as f64 / 7.0).sin());
        }
        let (_, bytes) = envelope::encode("gw-range", 1, seq + 1, &cols.finish()).unwrap();
        assert_eq!(call(&app, post(bytes)).await.0, StatusCode::OK);
    }
    let stats = Arc::clone(&hub.stats);
    for _ in 0..100 {
        if stats
            .readings_archived
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 300
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await; // files committed
    let base = "/v1/devices/pump-7/metrics/temp/readings";
    let range = format!("from={}&to={}", t0 / 1000, (t0 + 6 * 3_600_000_000) / 1000);
    let (status, body) = call(&app, get(&format!("{base}?{range}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let points = body["points"].as_array().unwrap();
    assert_eq!(
        points.len(),
        300,
        "archive and memory merged, no duplicates"
    );
    assert!(
        points
            .windows(2)
            .all(|w| w[0]["ts"].as_str() < w[1]["ts"].as_str())
    );
    let (_, body) = call(&app, get(&format!("{base}?{range}&step=1h&agg=count"))).await;
    let buckets = body["points"].as_array().unwrap();
    assert_eq!(buckets.len(), 5);
    assert_eq!(
        buckets
            .iter()
            .map(|b| b["value"].as_f64().unwrap())
            .sum::<f64>(),
        300.0
    );
    assert_eq!(buckets[0]["count"], 60);
    for (query, code) in [
        (format!("{range}&limit=10"), "too_many_points"),
        (format!("{range}&step=1h&agg=median"), "bad_agg"),
        ("from=0&to=99999999999999".to_string(), "bad_range"),
    ] {
        let (status, body) = call(&app, get(&format!("{base}?{query}"))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["code"], code);
    }
    // A scan whose request is gone stops at the next batch it reads.
    let gone = CancelOnDrop::default();
    let token = gone.token();
    drop(gone);
    let scan = query::read_points(
        &crate::archive::reader::ArchiveReader::local(&hub.archive_root),
        "pump-7",
        "temp",
        t0,
        t0 + 5 * 3_600_000_000,
        &token,
    );
    assert!(matches!(scan, Err(query::ScanError::Cancelled)), "{scan:?}");
    hub.shutdown().await;
}

/// The document is generated from the handlers the router is built from;
/// this checks it is well-formed, that it declares the guard's security
/// exactly when tokens are configured, and that every documented GET route
/// answers with one of its documented statuses for valid and for hostile
/// input (a small property-style client; CI also runs schemathesis).
#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);
    let (status, doc) = call(&app, get("/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/devices", "get"),
        ("/v1/devices/{device}", "get"),
        ("/v1/devices/{device}/metrics/{metric}/readings", "get"),
        ("/v1/anomalies", "get"),
        ("/v1/stream", "get"),
        ("/v1/query", "get"),
        ("/v1/batches", "post"),
        ("/v1/admin/losses", "get"),
        ("/v1/admin/losses/acknowledge", "post"),
        #[cfg(feature = "sql")]
        ("/v1/sql", "get"),
        #[cfg(feature = "sql")]
        ("/v1/sql", "post"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} missing from the document");
        // Open API: no security declared, none asked for.
        assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
    }
    assert_eq!(
        paths.len(),
        13 + usize::from(cfg!(feature = "sql")),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(doc["components"]["securitySchemes"].is_null());
    let hostile = [
        "",
        "0",
        "-1",
        "99999999999999999999",
        "%00",
        "abc",
        "c",
        "1h",
        "2026-13-45T99:00:00Z",
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for (path, item) in paths {
        let Some(op) = item.get("get") else { continue };
        if path == "/v1/stream" {
            continue;
        }
        let documented: Vec<u16> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|c| c.parse().unwrap())
            .collect();
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        for p in &params {
            if p["in"] == "path" {
                assert!(path.contains(&format!("{{{}}}", p["name"].as_str().unwrap())));
            }
        }
        for _ in 0..25 {
            let path = path
                .replace("{device}", "pump-7")
                .replace("{metric}", "temp");
            let mut query: Vec<String> = Vec::new();
            for p in params.iter().filter(|p| p["in"] == "query") {
                if rng.bool() {
                    query.push(format!(
                        "{}={}",
                        p["name"].as_str().unwrap(),
                        hostile[rng.usize(..hostile.len())]
                    ));
                }
            }
            let uri = format!("{path}?{}", query.join("&"));
            let (status, body) = call(&app, get(&uri)).await;
            assert!(
                documented.contains(&status.as_u16()),
                "{uri} answered {status}, not documented ({documented:?}): {body}"
            );
            if !status.is_success() {
                assert!(
                    body["error"]["code"].is_string(),
                    "{uri}: error body {body}"
                );
            }
        }
    }
    hub.shutdown().await;
}

/// With tokens, every route but `/` and `/health` declares the bearer
/// requirement and the guard's answers, and the scope it needs.
#[tokio::test]
async fn with_tokens_the_document_declares_what_the_guard_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let token = access::TokenConfig {
        name: "reader".into(),
        token: Some(iot_tls::Secret::new("secret")),
        token_file: None,
        gateway: None,
        token_sha256: None,
        scopes: vec![access::Scope::Read],
        rate_limit: None,
    };
    let app = router(
        ApiContext::new(
            hub.intake.clone(),
            Arc::clone(&hub.state),
            Arc::clone(&hub.stats),
        )
        .with_access(Arc::new(
            access::Access::new(&[token], Vec::new(), Duration::from_secs(30)).unwrap(),
        )),
    );
    let (status, _) = call(&app, get("/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut req = get("/v1/openapi.json");
    req.headers_mut().insert(
        axum::http::header::AUTHORIZATION,
        "Bearer secret".parse().unwrap(),
    );
    let (status, doc) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = path == "/" || path == "/health";
            assert_eq!(
                op["security"].as_array().unwrap().is_empty(),
                open,
                "{method} {path}"
            );
            assert_eq!(op["responses"]["401"].is_object(), !open, "{method} {path}");
            let scope = match (method.as_str(), path.as_str()) {
                _ if open => continue,
                ("post", "/v1/batches") => "ingest",
                (_, p) if p.starts_with("/v1/admin/") => "admin",
                _ => "read",
            };
            assert!(
                op["description"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("`{scope}` scope")),
                "{method} {path}: {}",
                op["description"]
            );
        }
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_endpoint_streams_json_jsonl_csv_and_parquet_with_filters_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        HubConfig::for_dir_with_model("query", dir.path(), &crate::test_models("novelty"));
    cfg.mqtt.enabled = false;
    cfg.archive.max_file_age = Duration::from_millis(50);
    let hub = crate::hub::start(cfg).await.unwrap();
    let app = router(
        ApiContext::new(
            hub.intake.clone(),
            Arc::clone(&hub.state),
            Arc::clone(&hub.stats),
        )
        .with_archive(hub.archive_root.clone()),
    );
    let t0 = 1_700_000_000_000_000i64;
    let mut cols = ReadingColumns::default();
    for i in 0..200 {
        let device = if i % 2 == 0 {
            "pump-a"
        } else {
            "pump-b, \"quoted\""
        };
        cols.push(device, "temp", t0 + i * 1_000_000, i as f64);
    }
    let (_, bytes) = envelope::encode("gw-q", 1, 1, &cols.finish()).unwrap();
    assert_eq!(call(&app, post(bytes)).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    hub.shutdown().await; // commits everything
    let range = format!("from={}&to={}", t0 / 1000, (t0 + 3_600_000_000) / 1000);

    let (status, body) = call(
        &app,
        get(&format!(
            "/v1/query?{range}&device=pump-a&columns=device,value"
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body.as_array().unwrap();
    assert_eq!(rows.len(), 100);
    assert!(
        rows.iter()
            .all(|r| r["device"] == "pump-a" && r.as_object().unwrap().len() == 2)
    );

    let resp = app
        .clone()
        .oneshot(get(&format!("/v1/query?{range}&format=jsonl&limit=7")))
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(text.lines().count(), 7, "the limit holds");

    let mut req = get(&format!("/v1/query?{range}&columns=device,ts,value"));
    req.headers_mut()
        .insert(header::ACCEPT, "text/csv".parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("device,ts,value"));
    assert_eq!(text.lines().count(), 201);
    assert!(text.contains("\"pump-b, \"\"quoted\"\"\""), "CSV quoting");

    let resp = app
        .clone()
        .oneshot(get(&format!(
            "/v1/query?{range}&format=parquet&columns=value"
        )))
        .await
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 200);

    for (q, code) in [
        ("columns=nope".to_string(), "bad_column"),
        ("format=xml".to_string(), "bad_format"),
        ("table=secrets".to_string(), "bad_table"),
        ("limit=0".to_string(), "bad_limit"),
    ] {
        let (status, body) = call(&app, get(&format!("/v1/query?{range}&{q}"))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {body}");
        assert_eq!(body["error"]["code"], code);
    }
    let (status, _) = call(&app, get("/v1/query?from=0&to=1")).await;
    assert_eq!(status, StatusCode::OK, "an empty range is an empty answer");
    let (status, body) = call(&app, get("/v1/query")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("bad_range"))
    );
}

#[tokio::test]
async fn a_device_shows_its_gateway_and_the_model_of_each_metric() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);
    assert_eq!(
        call(&app, post(envelope_bytes(1, 30))).await.0,
        StatusCode::OK
    );
    let mut body = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, b) = call(&app, get("/v1/devices/pump-7")).await;
        if status == StatusCode::OK {
            body = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(body["gateway"], "gw-api", "{body}");
    assert_eq!(body["metrics"][0]["model"], "novelty 1.0.0");
    let (status, body) = call(&app, get("/v1/devices/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_device");
    hub.shutdown().await;
}

/// Hostile ranges: extreme and overflowing times are refused at once with
/// 422, before any file is touched.
#[tokio::test]
async fn overflowing_and_absurd_ranges_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router(
        ApiContext::new(
            hub.intake.clone(),
            Arc::clone(&hub.state),
            Arc::clone(&hub.stats),
        )
        .with_archive(hub.archive_root.clone()),
    );
    let base = "/v1/devices/pump-7/metrics/temp/readings";
    for (route, range, code) in [
        ("/v1/query", "from=-9223372036854775808&to=0", "bad_time"),
        ("/v1/query", "from=-9223372036854775&to=0", "bad_time"),
        ("/v1/query", "from=0&to=9223372036854775807", "bad_time"),
        ("/v1/query", "from=1&to=0", "bad_range"),
        (base, "from=-9223372036854775808&to=0", "bad_time"),
        (base, "from=-62135596800000&to=253402300799999", "bad_range"),
        (base, "to=-62135596800001", "bad_time"),
        (base, "from=0&to=1000&step=1ms", "bad_step"),
        (
            base,
            "from=0&to=1000&step=99999999999999999999h",
            "bad_step",
        ),
        ("/v1/anomalies", "since=-9223372036854775808", "bad_time"),
    ] {
        let (status, body) = call(&app, get(&format!("{route}?{range}"))).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{route}?{range}: {body}"
        );
        assert_eq!(body["error"]["code"], code, "{route}?{range}");
    }
    hub.shutdown().await;
}

fn envelope_of(gateway: &str, seq: u64, rows: &[(&str, i64)]) -> Vec<u8> {
    let mut cols = ReadingColumns::default();
    for (device, ts) in rows {
        cols.push(device, "temp", *ts, 1.0);
    }
    envelope::encode(gateway, 1, seq, &cols.finish()).unwrap().1
}

/// Readings stamped 1970 or in a far-future year are refused before the
/// WAL, with a reason in the answer; the rest of their batch is kept.
#[tokio::test]
async fn absurd_timestamps_are_refused_with_a_reason_and_never_archived() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        HubConfig::for_dir_with_model("times", dir.path(), &crate::test_models("novelty"));
    cfg.mqtt.enabled = false;
    let hub = crate::hub::start(cfg).await.unwrap();
    let app = router_for(&hub);
    let now = chrono::Utc::now().timestamp_micros();
    let year_3000 = 32_503_680_000_000_000;
    let (status, body) = call(
        &app,
        post(envelope_of(
            "gw-t",
            1,
            &[("d1", now), ("d1", 0), ("d2", year_3000)],
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "durable");
    assert_eq!(body["dropped"]["rows"], 2, "{body}");
    assert!(
        body["dropped"]["reason"]
            .as_str()
            .unwrap()
            .contains("before the hub's clock")
    );
    let (status, body) = call(&app, post(envelope_of("gw-t", 2, &[("d1", 0)]))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["status"], "rejected");
    let root = hub.archive_root.clone();
    hub.shutdown().await;
    let hours: Vec<String> = crate::archive::committed_files(&root, crate::archive::Table::Scored)
        .unwrap()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        hours
            .iter()
            .all(|p| !p.contains("date=1970") && !p.contains("date=3000")),
        "{hours:?}"
    );
    let rows: usize = crate::archive::read_table(&root, crate::archive::Table::Scored)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 1);
}

/// A gateway naming ever more series is capped: readings of new series past
/// the cap are refused with a reason, known series keep flowing, and other
/// gateways keep their own room.
#[tokio::test]
async fn series_past_the_caps_are_refused_and_known_series_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        HubConfig::for_dir_with_model("series", dir.path(), &crate::test_models("novelty"));
    cfg.mqtt.enabled = false;
    cfg.intake.max_series_per_gateway = 100;
    cfg.intake.max_series = 150;
    let hub = crate::hub::start(cfg).await.unwrap();
    let app = router_for(&hub);
    let now = chrono::Utc::now().timestamp_micros();
    let names: Vec<String> = (0..1000).map(|i| format!("dev-{i}")).collect();
    let flood: Vec<(&str, i64)> = names.iter().map(|n| (n.as_str(), now)).collect();
    let (status, body) = call(&app, post(envelope_of("gw-flood", 1, &flood))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dropped"]["rows"], 900, "{body}");
    assert!(
        body["dropped"]["reason"]
            .as_str()
            .unwrap()
            .contains("series limit")
    );
    // Known series still flow; another new one does not.
    let (_, body) = call(
        &app,
        post(envelope_of(
            "gw-flood",
            2,
            &[("dev-1", now + 1), ("dev-999", now)],
        )),
    )
    .await;
    assert_eq!(body["dropped"]["rows"], 1, "{body}");
    // Another gateway gets the hub's remaining room (50), not more.
    let (_, body) = call(&app, post(envelope_of("gw-other", 1, &flood[..80]))).await;
    assert_eq!(body["dropped"]["rows"], 30, "{body}");
    assert_eq!(
        hub.stats
            .series_held
            .load(std::sync::atomic::Ordering::Relaxed),
        150
    );
    assert_eq!(
        hub.stats
            .readings_refused_series
            .load(std::sync::atomic::Ordering::Relaxed),
        931
    );
    hub.shutdown().await;
}

/// Units sent with readings (SenML `u`) reach the archive and the API.
#[tokio::test]
async fn units_are_archived_and_shown_per_metric() {
    let dir = tempfile::tempdir().unwrap();
    let hub = test_hub(dir.path()).await;
    let app = router_for(&hub);
    let now = chrono::Utc::now().timestamp_micros();
    let mut cols = ReadingColumns::default();
    cols.push("pump-9", "rpm", now, 1200.0);
    cols.push_with_unit("pump-9", "temp", now, 21.5, Some("Cel"));
    let bytes = envelope::encode("gw-u", 1, 1, &cols.finish()).unwrap().1;
    assert_eq!(call(&app, post(bytes)).await.0, StatusCode::OK);
    let mut body = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, b) = call(&app, get("/v1/devices/pump-9")).await;
        if status == StatusCode::OK && b["metrics"].as_array().is_some_and(|m| m.len() == 2) {
            body = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = body["metrics"].as_array().expect("two metrics");
    let by_name = |n: &str| metrics.iter().find(|m| m["metric"] == n).unwrap().clone();
    assert_eq!(by_name("temp")["unit"], "Cel");
    assert!(by_name("rpm").get("unit").is_none());
    let root = hub.archive_root.clone();
    hub.shutdown().await;
    use arrow_array::Array;
    let batches = crate::archive::read_table(&root, crate::archive::Table::Scored).unwrap();
    let mut units = Vec::new();
    for b in &batches {
        let metric = b.column_by_name("metric").unwrap();
        let metric = crate::names::StrColumn::of(metric.as_ref()).unwrap();
        let unit = b
            .column_by_name("unit")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            units.push((
                metric.value(i).to_owned(),
                unit.is_valid(i).then(|| unit.value(i).to_owned()),
            ));
        }
    }
    units.sort();
    assert_eq!(
        units,
        vec![("rpm".into(), None), ("temp".into(), Some("Cel".into()))]
    );
}

/// `/v1/sql` answers queries over the archive's tables in every format,
/// refuses everything but queries, and needs only the read scope.
#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_queries_the_archive_and_refuses_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = HubConfig::for_dir_with_model("sql", dir.path(), &crate::test_models("novelty"));
    cfg.mqtt.enabled = false;
    cfg.archive.max_file_age = Duration::from_millis(50);
    let hub = crate::hub::start(cfg).await.unwrap();
    let app = router(
        ApiContext::new(
            hub.intake.clone(),
            Arc::clone(&hub.state),
            Arc::clone(&hub.stats),
        )
        .with_archive(hub.archive_root.clone())
        .with_sql(Arc::new(
            iot_sql::Engine::new(iot_sql::Limits {
                max_rows: 150,
                ..iot_sql::Limits::default()
            })
            .unwrap(),
        )),
    );
    let t0 = 1_700_000_000_000_000i64;
    let mut cols = ReadingColumns::default();
    for i in 0..200 {
        let device = if i % 2 == 0 { "pump-a" } else { "pump-b" };
        cols.push(device, "temp", t0 + i * 1_000_000, i as f64);
    }
    let (_, bytes) = envelope::encode("gw-sql", 1, 1, &cols.finish()).unwrap();
    assert_eq!(call(&app, post(bytes)).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    hub.shutdown().await;

    let q = |sql: &str| {
        format!(
            "/v1/sql?q={}",
            url::form_urlencoded::byte_serialize(sql.as_bytes()).collect::<String>()
        )
    };
    let (status, body) = call(
        &app,
        get(&q(
            "SELECT device, count(*) AS n, max(value) AS top, min(seq) AS seq, \
                min(date) AS date, min(hub) AS hub \
                FROM scored GROUP BY device ORDER BY device",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!([
            {"device": "pump-a", "n": 100, "top": 198.0, "seq": 1, "date": "2023-11-14", "hub": "sql"},
            {"device": "pump-b", "n": 100, "top": 199.0, "seq": 1, "date": "2023-11-14", "hub": "sql"},
        ])
    );
    let resp = app
        .clone()
        .oneshot(
            Request::post("/v1/sql?format=csv")
                .body(Body::from(
                    "SELECT device, value FROM scored WHERE device = 'pump-b' ORDER BY ts LIMIT 2",
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(text, "device,value\npump-b,1.0\npump-b,3.0\n");

    for (sql, code) in [
        ("DROP TABLE scored", "not_a_query"),
        ("INSERT INTO scored SELECT * FROM scored", "not_a_query"),
        ("CREATE TABLE t AS SELECT 1", "not_a_query"),
        ("SELEC 1", "bad_sql"),
        ("SELECT * FROM nowhere", "bad_sql"),
        ("SELECT nothing FROM scored", "bad_sql"),
        ("SELECT * FROM scored", "too_many_rows"),
    ] {
        let (status, body) = call(&app, get(&q(sql))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{sql}: {body}");
        assert_eq!(body["error"]["code"], code, "{sql}: {body}");
    }
    let (status, body) = call(&app, get("/v1/sql")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("no_query"))
    );
    // A GET's query is at most 4,096 characters (the HTTP server refuses a
    // URI over 64 KiB with 414 before the hub sees it); longer ones are
    // POSTed.
    let long_get = format!("SELECT 1 AS n /* {} */", "é".repeat(4_100));
    let (status, body) = call(&app, get(&q(&long_get))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("query_too_long")),
        "{body}"
    );
    let resp = app
        .clone()
        .oneshot(
            Request::post("/v1/sql")
                .header("content-type", "application/sql")
                .body(Body::from(long_get))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "POSTed, it is taken");
    let long = "SELECT 1 ".repeat(10_000);
    let resp = app
        .clone()
        .oneshot(Request::post("/v1/sql").body(Body::from(long)).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A query in a POST body is a read.
    assert_eq!(
        access::Access::required_scope(&axum::http::Method::POST, "/v1/sql"),
        Some(access::Scope::Read)
    );
}
