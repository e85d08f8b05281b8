//! Access control in front of every route: bearer tokens with scopes,
//! per-token rate limits, CORS and a request timeout.
//!
//! Scopes: `read` (every `GET /v1/...`, `POST /v1/sql` and `/metrics`), `ingest`
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
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use iot_tls::Secret;
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
    pub token: Option<Secret>,
    /// ...or its SHA-256 in hex (`printf %s "$TOKEN" | sha256sum`)...
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// ...or a file holding the secret, re-read when it changes (rotation
    /// without a restart).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    pub scopes: Vec<Scope>,
    /// Requests per second (burst: one second's worth); absent = unlimited.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// A per-gateway ingest token: batches sent with it are taken only for
    /// this gateway (others are refused with 403 and counted). Without it
    /// an ingest token may send for any gateway (a relay or replay tool).
    #[serde(default)]
    pub gateway: Option<String>,
}

impl TokenConfig {
    /// The SHA-256 the presented token is compared with (reads
    /// `token-file`).
    pub fn digest(&self) -> Result<[u8; 32], String> {
        match (&self.token, &self.token_sha256, &self.token_file) {
            (Some(t), None, None) => Ok(Sha256::digest(t.expose().as_bytes()).into()),
            (None, Some(h), None) => {
                let mut out = [0u8; 32];
                let hex = |i: usize| {
                    h.get(2 * i..2 * i + 2)
                        .and_then(|d| u8::from_str_radix(d, 16).ok())
                };
                for (i, b) in out.iter_mut().enumerate() {
                    *b = hex(i)
                        .filter(|_| h.len() == 64)
                        .ok_or("token-sha256 must be 64 hex digits")?;
                }
                Ok(out)
            }
            (None, None, Some(path)) => {
                let secret = iot_tls::read_secret("token", None, Some(path))
                    .map_err(|e| e.to_string())?
                    .expect("a file was given");
                Ok(Sha256::digest(secret.expose().as_bytes()).into())
            }
            (None, None, None) => Err("give one of token, token-sha256 or token-file".into()),
            _ => Err("give only one of token, token-sha256 or token-file".into()),
        }
    }
}

/// Who a request's token says the caller is (put in the request's
/// extensions by the guard).
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: String,
    /// The gateway a per-gateway ingest token is bound to.
    pub gateway: Option<String>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The access policy the middleware applies.
#[derive(Debug)]
pub struct Access {
    /// Each configured token with its current digest (a token file's
    /// digest follows the file, see [`Access::refresh_token_files`]).
    tokens: RwLock<Vec<([u8; 32], TokenConfig)>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    cors_origins: Vec<String>,
    request_timeout: Duration,
}

impl Access {
    /// Fails (naming the token) if a token cannot be read.
    pub fn new(
        tokens: &[TokenConfig],
        cors_origins: Vec<String>,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let tokens = tokens
            .iter()
            .map(|t| {
                t.digest()
                    .map(|d| (d, t.clone()))
                    .map_err(|e| format!("token '{}': {e}", t.name))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tokens: RwLock::new(tokens),
            buckets: Mutex::new(HashMap::new()),
            cors_origins,
            request_timeout,
        })
    }

    /// Open access (tests, the demo).
    pub fn open() -> Self {
        Self::new(&[], Vec::new(), Duration::from_secs(30)).expect("no tokens to read")
    }

    /// Whether the API runs without tokens (then every route is open).
    pub fn is_open(&self) -> bool {
        self.tokens.read().expect("not poisoned").is_empty()
    }

    /// Re-reads every `token-file`: a changed token is in force for the
    /// next request; an unreadable or empty file is an ERROR and the token
    /// read before stays in force.
    pub fn refresh_token_files(&self) {
        let mut tokens = self.tokens.write().expect("not poisoned");
        for (digest, cfg) in tokens.iter_mut() {
            if cfg.token_file.is_none() {
                continue;
            }
            match cfg.digest() {
                Ok(d) if d != *digest => {
                    *digest = d;
                    tracing::info!(token = %cfg.name, "token file changed; the new token is in force");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(token = %cfg.name, error = %e, "token file refused; the token read before stays in force")
                }
            }
        }
    }

    /// The scope a request needs (`None`: open to anyone). `path` is the
    /// request's path or a documented route's template.
    pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
        match (method, path) {
            (_, "/health" | "/") => None,
            (&Method::POST, "/v1/batches") => Some(Scope::Ingest),
            // A query in the body is still a read.
            (&Method::POST, "/v1/sql") => Some(Scope::Read),
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
    fn token(&self, presented: &str) -> Option<TokenConfig> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (d, cfg) in self.tokens.read().expect("not poisoned").iter() {
            let same = d.iter().zip(digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = Some(cfg.clone());
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
pub async fn guard(State(access): State<Arc<Access>>, mut req: Request, next: Next) -> Response {
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
        Err(refused) => *refused,
        Ok(caller) => {
            if let Some(caller) = caller {
                req.extensions_mut().insert(caller);
            }
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

/// `Err(answer)` when the request must be refused; the caller when a token
/// was needed and given.
fn check(access: &Access, req: &Request<Body>) -> Result<Option<Caller>, Box<Response>> {
    let Some(scope) = Access::required_scope(req.method(), req.uri().path()) else {
        return Ok(None);
    };
    if access.is_open() {
        return Ok(None);
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
        return Err(Box::new(resp));
    };
    if !cfg.scopes.contains(&scope) && !cfg.scopes.contains(&Scope::Admin) {
        return Err(Box::new(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token '{}' lacks the {} scope", cfg.name, scope.name()),
            )
            .into_response(),
        ));
    }
    if let Some(wait) = access.over_rate(&cfg) {
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
        return Err(Box::new(resp));
    }
    Ok(Some(Caller {
        token: cfg.name,
        gateway: cfg.gateway,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> Request<Body> {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/batches")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn a_token_file_is_followed_and_a_bad_new_one_keeps_the_old_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw-a.token");
        std::fs::write(&file, "first-token\n").unwrap();
        let cfg = TokenConfig {
            name: "gw-a".into(),
            token: None,
            token_sha256: None,
            token_file: Some(file.clone()),
            scopes: vec![Scope::Ingest],
            rate_limit: None,
            gateway: Some("gw-a".into()),
        };
        let access = Access::new(&[cfg], Vec::new(), Duration::from_secs(5)).unwrap();
        let caller = check(&access, &request("first-token")).unwrap().unwrap();
        assert_eq!(caller.gateway.as_deref(), Some("gw-a"));

        std::fs::write(&file, "second-token\n").unwrap();
        access.refresh_token_files();
        assert!(
            check(&access, &request("first-token")).is_err(),
            "the old token is retired"
        );
        assert!(check(&access, &request("second-token")).is_ok());

        // An empty or missing file is refused; the last good token stays.
        std::fs::write(&file, "").unwrap();
        access.refresh_token_files();
        assert!(check(&access, &request("second-token")).is_ok());
        std::fs::remove_file(&file).unwrap();
        access.refresh_token_files();
        assert!(check(&access, &request("second-token")).is_ok());
        assert!(
            Access::new(
                &[TokenConfig {
                    token_file: Some(file),
                    ..access.tokens.read().unwrap()[0].1.clone()
                }],
                Vec::new(),
                Duration::from_secs(5)
            )
            .is_err(),
            "a missing file at start-up is an error"
        );
    }
}
