//! Access control in front of every route: bearer tokens with scopes,
//! per-token rate limits, CORS and a request timeout.
//!
//! Scopes: `read` (every `GET /v1/...` and `/metrics`), `ingest`
//! (`POST /v1/batches`), `admin` (everything). `/health` and the dashboard
//! page `/` (static; its API calls carry the token) are always open. The
//! stream also accepts `?access_token=` (browsers' EventSource cannot send
//! headers).
//! Without configured tokens the API is open; the configuration refuses that
//! unless the listener is on loopback or `allow-anonymous = true` says so on
//! purpose (the demo runs open on loopback and prints it). Tokens are
//! compared in constant time against their SHA-256, so the configuration may
//! hold `token-sha256` instead of the secret.
//!
//! Answers: 401 (no or unknown token, with `WWW-Authenticate: Bearer`), 403
//! (token lacks the scope), 429 (the token's rate limit; `Retry-After`), 504
//! (the request ran past `request-timeout`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    Read,
    Ingest,
    Admin,
}

impl Scope {
    /// As the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }
}

/// One `[[http.tokens]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TokenConfig {
    /// Names the token in logs and metrics.
    pub name: String,
    /// The secret itself...
    #[serde(default)]
    pub token: Option<String>,
    /// ...or its SHA-256 in hex (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    pub scopes: Vec<Scope>,
    /// Requests per second (burst: one second's worth); absent = unlimited.
    #[serde(default)]
    pub rate_limit: Option<f64>,
}

impl TokenConfig {
    pub fn digest(&self) -> Option<[u8; 32]> {
        match (&self.token, &self.token_sha256) {
            (Some(t), _) => Some(Sha256::digest(t.as_bytes()).into()),
            (None, Some(h)) if h.len() == 64 => {
                let mut out = [0u8; 32];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(out)
            }
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The access policy the middleware applies.
#[derive(Debug)]
pub struct Access {
    tokens: Vec<([u8; 32], TokenConfig)>,
    buckets: Mutex<HashMap<String, Bucket>>,
    cors_origins: Vec<String>,
    request_timeout: Duration,
}

impl Access {
    pub fn new(
        tokens: &[TokenConfig],
        cors_origins: Vec<String>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            tokens: tokens
                .iter()
                .filter_map(|t| Some((t.digest()?, t.clone())))
                .collect(),
            buckets: Mutex::new(HashMap::new()),
            cors_origins,
            request_timeout,
        }
    }

    /// Open access (tests, the demo).
    pub fn open() -> Self {
        Self::new(&[], Vec::new(), Duration::from_secs(30))
    }

    /// Whether the API runs without tokens (then every route is open).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The scope a request needs (`None`: open to anyone). `path` is the
    /// request's path or a documented route's template.
    pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
        match (method, path) {
            (_, "/health" | "/") => None,
            (&Method::POST, "/v1/batches") => Some(Scope::Ingest),
            (_, p) if p.starts_with("/v1/admin/") => Some(Scope::Admin),
            (&Method::GET | &Method::HEAD, _) => Some(Scope::Read),
            _ => Some(Scope::Admin),
        }
    }

    /// Whether requests to `path` are cut at the request timeout (all but
    /// the long-lived event stream).
    pub fn bounded(path: &str) -> bool {
        path != "/v1/stream"
    }

    /// The token's config when it is known (constant-time comparison).
    fn token(&self, presented: &str) -> Option<&TokenConfig> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (d, cfg) in &self.tokens {
            let same = d.iter().zip(digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(cfg);
            }
        }
        found
    }

    /// Seconds to wait if the token is over its rate.
    fn over_rate(&self, cfg: &TokenConfig) -> Option<u64> {
        let rate = cfg.rate_limit?;
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let now = Instant::now();
        let b = buckets.entry(cfg.name.clone()).or_insert(Bucket {
            tokens: rate.max(1.0),
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate.max(1.0));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    fn cors_origin(&self, req: &Request) -> Option<HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.cors_origins
            .iter()
            .any(|o| o == "*" || o == text)
            .then(|| origin.clone())
    }
}

/// The middleware.
pub async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let cors = access.cors_origin(&req);
    if req.method() == Method::OPTIONS {
        // CORS preflight.
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(origin) = cors {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, last-event-id"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        return resp;
    }
    let mut resp = match check(&access, &req) {
        Some(refused) => refused,
        None => {
            // Long-lived streams are exempt from the request timeout.
            if !Access::bounded(req.uri().path()) {
                next.run(req).await
            } else {
                match tokio::time::timeout(access.request_timeout, next.run(req)).await {
                    Ok(resp) => resp,
                    Err(_) => ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        "the request took too long",
                    )
                    .into_response(),
                }
            }
        }
    };
    if let Some(origin) = cors {
        resp.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    resp
}

/// `Some(answer)` when the request must be refused.
fn check(access: &Access, req: &Request<Body>) -> Option<Response> {
    let scope = Access::required_scope(req.method(), req.uri().path())?;
    if access.tokens.is_empty() {
        return None;
    }
    // Browsers' EventSource cannot set headers: the stream also takes the
    // token as `access_token` in its query.
    let from_query = (req.uri().path() == "/v1/stream")
        .then(|| {
            req.uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")))
        })
        .flatten();
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(from_query);
    let Some(cfg) = presented.and_then(|t| access.token(t)) else {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Some(resp);
    };
    if !cfg.scopes.contains(&scope) && !cfg.scopes.contains(&Scope::Admin) {
        return Some(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token '{}' lacks the {} scope", cfg.name, scope.name()),
            )
            .into_response(),
        );
    }
    if let Some(wait) = access.over_rate(cfg) {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("token '{}' is over its rate limit", cfg.name),
        )
        .into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&wait.to_string()).expect("digits"),
        );
        return Some(resp);
    }
    None
}
