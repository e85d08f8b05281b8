//! The hub's configuration (TOML, layered with `HUB__...` environment
//! variables; see [`schemas::settings`] for the precedence rules).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use iot_tls::{ClientTls, Secret, ServerTls};
use serde::{Deserialize, Serialize};

use schemas::settings::{ConfigProblem, Validate, duration};

pub const ENV_PREFIX: &str = "HUB";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HubConfig {
    /// Unique, stable id of this hub; it names the hub's archive files, so two
    /// hubs sharing an archive must have different ids.
    pub hub_id: String,
    /// Where the write-ahead log, the dedup snapshot and (by default) the
    /// archive live.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub mqtt: HubMqtt,
    #[serde(default)]
    pub http: HubHttp,
    #[serde(default)]
    pub intake: IntakeSettings,
    #[serde(default)]
    pub archive: ArchiveSettings,
    #[serde(default)]
    pub scoring: ScoringSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct HubMqtt {
    /// Receive batches over MQTT. HTTP intake is always on.
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Defaults to `hub-<hub-id>`.
    pub client_id: Option<String>,
    /// Hubs with the same group split the batches between them
    /// (`$share/<group>/<prefix>/batches/+`).
    pub share_group: String,
    pub topic_prefix: String,
    /// Announce this hub on `<prefix>/hubs/<hub-id>` (retained; cleared by
    /// the MQTT will if it dies) and take the batches gateways send to it on
    /// `<prefix>/hub/<hub-id>/batches/+`: gateways then keep to one hub, so
    /// it sees their series whole (see `iot_mqtt::routing`). The
    /// announcement is withdrawn while the hub is unhealthy.
    pub announce: bool,
    #[serde(with = "duration")]
    pub keep_alive: Duration,
    /// Broker login: a user name and `password-file` (or `password`).
    pub username: Option<String>,
    /// Prefer `password-file`, which keeps the secret out of this file.
    pub password: Option<Secret>,
    /// A file holding the password (re-read before every reconnection).
    pub password_file: Option<PathBuf>,
    /// TLS to the broker (`ca-file`, `system-roots`, `cert-file`,
    /// `key-file`); absent: plain TCP. Re-read before every reconnection.
    pub tls: Option<ClientTls>,
}

impl HubMqtt {
    /// The login and TLS settings of the broker connection.
    pub fn security(&self) -> iot_mqtt::LinkSettings<'_> {
        iot_mqtt::LinkSettings {
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            password_file: self.password_file.as_deref(),
            tls: self.tls.as_ref(),
        }
    }
}

impl Default for HubMqtt {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            share_group: "hubs".into(),
            topic_prefix: "iot".into(),
            announce: true,
            keep_alive: Duration::from_secs(30),
            username: None,
            password: None,
            password_file: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct HubHttp {
    pub listen: SocketAddr,
    /// Bearer tokens and their scopes (see [`crate::api::access`]).
    pub tokens: Vec<crate::api::access::TokenConfig>,
    /// Serve without tokens although the listener is not on loopback.
    pub allow_anonymous: bool,
    /// Origins allowed by CORS (`*` for any); empty = no CORS headers.
    pub cors_origins: Vec<String>,
    /// Requests running longer are answered 504 (the stream is exempt).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// A client must send a request's headers within this time, and an idle
    /// keep-alive connection is closed after it.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Open connections at most (and never more than half the open-file
    /// limit); past it new clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// HTTPS (`cert-file`, `key-file`, and `client-ca-file` /
    /// `require-client-cert` for gateways known by their certificates);
    /// absent: plain HTTP. The files are re-read when they change and new
    /// handshakes use them.
    pub tls: Option<ServerTls>,
    /// Limits of `/v1/sql` (hubs built with the `sql` feature).
    pub sql: SqlSettings,
}

/// Limits of `/v1/sql` queries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct SqlSettings {
    /// Memory all running queries share for sorts, joins and aggregations
    /// (bytes); a query needing more is refused (nothing spills to disk).
    pub memory_limit: u64,
    /// A query running longer is stopped (504); `request-timeout` applies
    /// too, so the shorter of the two holds.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Most rows of an answer (more: 422, add a LIMIT).
    pub max_rows: usize,
    /// Queries running at once (more wait, within their timeout).
    pub concurrent: usize,
    /// Threads queries run on (apart from the threads that serve the API
    /// and take in data).
    pub threads: usize,
}

impl Default for SqlSettings {
    fn default() -> Self {
        Self {
            memory_limit: 256 << 20,
            timeout: Duration::from_secs(20),
            max_rows: 100_000,
            concurrent: 2,
            threads: 2,
        }
    }
}

impl Default for HubHttp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            tokens: Vec::new(),
            allow_anonymous: false,
            cors_origins: Vec::new(),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            tls: None,
            sql: SqlSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct IntakeSettings {
    /// Largest envelope accepted, bytes (also the HTTP body limit).
    pub max_batch_bytes: usize,
    /// Largest number of readings in one batch.
    pub max_batch_rows: u32,
    /// Group commit: the WAL is fsynced at most this long after the first
    /// batch of a group arrived (0 = fsync every batch on its own).
    #[serde(with = "duration")]
    pub group_commit_delay: Duration,
    /// A WAL segment is closed (and can later be deleted) past this size.
    pub wal_segment_bytes: u64,
    /// Gateway incarnations the dedup index remembers at most, and how long
    /// one is remembered after its last batch (longer than the agents'
    /// spool TTL, so that their resends are recognised).
    pub dedup_max_sources: usize,
    #[serde(with = "duration")]
    pub dedup_retention: Duration,
    /// Readings stamped further from the hub's clock than these are refused
    /// (the rest of their batch is kept; the gateway is told).
    #[serde(with = "duration")]
    pub max_past: Duration,
    #[serde(with = "duration")]
    pub max_future: Duration,
    /// Series (device, metric) one gateway, and the whole hub, may hold;
    /// readings of new series past either are refused (the gateway is told).
    pub max_series_per_gateway: usize,
    pub max_series: usize,
}

impl IntakeSettings {
    pub fn screen_rules(&self) -> crate::screen::ScreenRules {
        crate::screen::ScreenRules {
            max_past: self.max_past,
            max_future: self.max_future,
            max_series: self.max_series,
            max_series_per_gateway: self.max_series_per_gateway,
        }
    }
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            max_batch_bytes: 16 * 1024 * 1024,
            max_batch_rows: 1_000_000,
            group_commit_delay: Duration::from_millis(2),
            wal_segment_bytes: 64 * 1024 * 1024,
            dedup_max_sources: 100_000,
            dedup_retention: Duration::from_secs(35 * 24 * 3600),
            // Recorded data from years back can be replayed; 1970 (a device
            // without a clock) cannot.
            max_past: Duration::from_secs(20 * 365 * 24 * 3600),
            max_future: Duration::from_secs(24 * 3600),
            max_series_per_gateway: 50_000,
            max_series: 250_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct ArchiveSettings {
    /// Archive root; defaults to `<data-dir>/archive`.
    pub path: Option<PathBuf>,
    /// A file is committed once it reaches about this size...
    pub target_file_bytes: u64,
    /// ...or has been open this long, whichever first.
    #[serde(with = "duration")]
    pub max_file_age: Duration,
    /// Rows per Parquet row group; each row group is sorted by device,
    /// metric and time, so this many rows per open file are buffered.
    pub row_group_rows: usize,
    /// Files open at once (one per table and hour partition being written).
    /// A backfill spanning many hours would otherwise open one per hour:
    /// past this, the file written to least recently is committed.
    pub max_open_files: usize,
    /// How float columns (value, score, threshold, ...) are encoded:
    /// `plain`, which every Parquet reader knows, or `byte-stream-split`,
    /// which makes files about 15 % smaller at the same CPU cost and needs a
    /// recent reader (pyarrow, DuckDB, Spark 3.2+).
    pub float_encoding: FloatEncoding,
    /// zstd level of the Parquet files, 1 (fastest) to 22 (smallest).
    /// Higher levels trade archive CPU for smaller files (on the benchmark
    /// data level 3 is 3 % smaller than level 1 at about the same CPU).
    /// Compaction rewrites closed partitions at this level too.
    pub zstd_level: i32,
    /// Rows buffered for row groups across all open files; past this, the
    /// file with the most buffered rows writes its row group early. Bounds
    /// the archive's memory (about 100 bytes per row).
    pub max_buffered_rows: usize,
    /// A partition is closed (eligible for compaction) once its hour ended
    /// this long ago.
    #[serde(with = "duration")]
    pub compaction_grace: Duration,
    /// How often closed partitions are looked for small files to merge (one
    /// partition per round, so scoring never pauses for long).
    #[serde(with = "duration")]
    pub compaction_interval: Duration,
    /// Partitions older than this (by event hour) are deleted; absent: kept.
    #[serde(with = "schemas::settings::opt_duration")]
    pub retention: Option<Duration>,
    /// Data files no version of their table holds any more (replaced by
    /// compaction, past retention, or written by a hub that died before
    /// committing them) are deleted once they are this old. A reader
    /// holding a snapshot older than this may find files gone.
    #[serde(with = "duration")]
    pub vacuum_after: Duration,
    /// Log entries of each table that a newer checkpoint covers are deleted
    /// once they are this old (Delta's `logRetentionDuration`; readers
    /// cannot travel back to those versions any more).
    #[serde(with = "duration")]
    pub log_retention: Duration,
    /// Archive to S3-compatible object storage instead of the local disk
    /// (the local archive path then only stages files until they are
    /// uploaded; see [`crate::archive::s3`]).
    pub s3: Option<crate::archive::s3::S3Settings>,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            path: None,
            target_file_bytes: 128 * 1024 * 1024,
            max_file_age: Duration::from_secs(300),
            row_group_rows: 128 * 1024,
            max_open_files: 64,
            float_encoding: FloatEncoding::Plain,
            zstd_level: 3,
            max_buffered_rows: 1024 * 1024,
            compaction_grace: Duration::from_secs(3600),
            compaction_interval: Duration::from_secs(60),
            retention: None,
            vacuum_after: Duration::from_secs(3600),
            log_retention: crate::archive::tables::DEFAULT_LOG_RETENTION,
            s3: None,
        }
    }
}

/// See [`ArchiveSettings::float_encoding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FloatEncoding {
    Plain,
    ByteStreamSplit,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct ScoringSettings {
    /// Directory holding `manifest.json` and the ONNX file it names.
    pub model_dir: PathBuf,
    /// Readings of a device/metric used to learn its normalisation before it
    /// is scored; until then its rows are `warming_up`.
    pub warmup_readings: u32,
    /// Override of the manifest's calibrated threshold.
    pub threshold: Option<f64>,
    /// Which model scores which devices/metrics, before the default
    /// `model-dir` (see [`crate::scoring::router`]).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The state-monitor model (one that lists no metrics) that scores
    /// record-shaped devices no route takes, before `model-dir` (see
    /// [`crate::scoring::records`]). Absent: the shipped `state-monitor`
    /// when it is installed; `""`: none (every reading no route takes goes
    /// to `model-dir`).
    #[serde(default)]
    pub records_model_dir: Option<PathBuf>,
    /// How often model directories are checked for a new manifest (hot
    /// reload without a restart).
    #[serde(with = "duration")]
    pub reload_interval: std::time::Duration,
    /// How often the detectors' learned state is saved to
    /// `<data-dir>/detector-state` (see [`crate::detector_state`]); `0s`:
    /// never (a restart learns anew).
    #[serde(with = "duration")]
    pub state_snapshot_interval: std::time::Duration,
    /// Largest detector state snapshot written or read.
    pub state_max_bytes: u64,
    /// Share the detectors' learned state with the other hubs of this
    /// archive, per gateway, so that a gateway moving between hubs keeps it
    /// (see [`crate::detector_state::shared`]).
    pub state_sharing: bool,
    /// Threads that score a batch's series with the novelty family (the
    /// detector dominates a hub's CPU); 0: one per core.
    pub threads: usize,
}

impl ScoringSettings {
    /// The records model in force: the one set, or the shipped one when it
    /// is installed and none is set; `None` when there is none.
    pub fn records_model_dir(&self) -> Option<PathBuf> {
        match &self.records_model_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
            None => {
                let shipped = shipped_model("state-monitor");
                shipped.join("manifest.json").is_file().then_some(shipped)
            }
        }
    }

    /// [`ScoringSettings::threads`], with 0 resolved to the core count.
    pub fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }
}

/// One `[[scoring.routes]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RouteConfig {
    /// Names the route in logs and metrics.
    pub name: String,
    /// Device glob (`*`, `?`); absent = every device.
    #[serde(default)]
    pub device: Option<String>,
    /// Metric glob; absent = every metric the model takes.
    #[serde(default)]
    pub metric: Option<String>,
    pub model_dir: PathBuf,
    /// A shadow route scores alongside the live one; its rows go to the
    /// `shadow` table, never to anomaly events or the API.
    #[serde(default)]
    pub shadow: bool,
    /// Override of this model's calibrated threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        Self {
            model_dir: shipped_model("novelty"),
            warmup_readings: 200,
            threshold: None,
            routes: Vec::new(),
            records_model_dir: None,
            reload_interval: std::time::Duration::from_secs(5),
            state_snapshot_interval: std::time::Duration::from_secs(300),
            state_max_bytes: 64 << 30,
            state_sharing: false,
            threads: 0,
        }
    }
}

/// Where the models shipped with the hub are, found from the running
/// executable's place, never from the machine it was built on. The first
/// directory holding `novelty/manifest.json` among:
/// - `<exe dir>/models` (a tarball or a copy: the binary beside its models),
/// - `<exe dir>/../share/inference-hub/models` (an install under a prefix:
///   `/usr/bin` and `/usr/share/inference-hub/models`, `/usr/local/...`),
/// - `/usr/share/inference-hub/models` (the Debian package),
/// - `<exe dir>/../../models` and `<exe dir>/../../../models` (a cargo build
///   in a checkout: `target/<profile>/`, `target/<triple>/<profile>/` or a
///   test's `target/<profile>/deps/`).
pub fn shipped_models_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let dir = exe.parent()?;
    [
        dir.join("models"),
        dir.join("../share/inference-hub/models"),
        PathBuf::from("/usr/share/inference-hub/models"),
        dir.join("../../models"),
        dir.join("../../../models"),
    ]
    .into_iter()
    .find(|d| d.join("novelty/manifest.json").is_file())
}

/// A shipped model by name (`novelty`, `univariate-forecast`,
/// `state-monitor`, ...): in [`shipped_models_dir`], or `models/<name>`
/// relative to the working directory when no shipped models are found
/// (then `validate` names the key to set: `scoring.model-dir`).
pub fn shipped_model(name: &str) -> PathBuf {
    shipped_models_dir()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from("models").join(name))
}

impl HubConfig {
    /// Where the detectors' state snapshots live.
    pub fn detector_state_dir(&self) -> PathBuf {
        self.data_dir.join("detector-state")
    }

    pub fn archive_root(&self) -> PathBuf {
        self.archive
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("archive"))
    }

    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("hub-{}", self.hub_id))
    }

    /// Defaults for the demo and the benchmarks: the shipped models
    /// ([`shipped_model`]).
    pub fn for_dir(hub_id: &str, data_dir: &std::path::Path) -> Self {
        Self::for_dir_with_model(hub_id, data_dir, &shipped_model("novelty"))
    }

    /// Defaults with this default model (tests name the repository's).
    pub fn for_dir_with_model(
        hub_id: &str,
        data_dir: &std::path::Path,
        model_dir: &std::path::Path,
    ) -> Self {
        let mut cfg: Self = schemas::settings::load_str(
            &format!(
                "hub-id = {hub_id:?}\ndata-dir = {:?}\n[scoring]\nmodel-dir = {:?}",
                data_dir.display().to_string(),
                model_dir.display().to_string(),
            ),
            ENV_PREFIX,
            Vec::new(),
        )
        .expect("built-in defaults are valid");
        cfg.http.listen = "127.0.0.1:0".parse().expect("static");
        cfg
    }
}

impl Validate for HubConfig {
    fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        let id_ok = !self.hub_id.is_empty()
            && self.hub_id.len() <= 64
            && self
                .hub_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !self.hub_id.starts_with('-');
        if !id_ok {
            problems.push(ConfigProblem::new(
                "hub-id",
                "must be 1..=64 characters of [A-Za-z0-9_-], not starting with '-' (it is part of archive file names and MQTT topics)",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem::new("data-dir", "must not be empty"));
        }
        if self.mqtt.share_group.is_empty() || self.mqtt.share_group.contains(['/', '+', '#']) {
            problems.push(ConfigProblem::new(
                "mqtt.share-group",
                "must be a single topic level",
            ));
        }
        if self.intake.max_batch_bytes < 1024 {
            problems.push(ConfigProblem::new(
                "intake.max-batch-bytes",
                "must be at least 1024",
            ));
        }
        if self.intake.max_batch_rows == 0 {
            problems.push(ConfigProblem::new(
                "intake.max-batch-rows",
                "must be at least 1",
            ));
        }
        if self.intake.max_series == 0 || self.intake.max_series_per_gateway == 0 {
            problems.push(ConfigProblem::new(
                "intake.max-series",
                "max-series and max-series-per-gateway must be at least 1",
            ));
        }
        if self.intake.dedup_max_sources == 0 {
            problems.push(ConfigProblem::new(
                "intake.dedup-max-sources",
                "must be at least 1",
            ));
        }
        if self.http.max_connections == 0 {
            problems.push(ConfigProblem::new(
                "http.max-connections",
                "must be at least 1",
            ));
        }
        if self.http.header_read_timeout.is_zero() {
            problems.push(ConfigProblem::new(
                "http.header-read-timeout",
                "must be longer than zero",
            ));
        }
        if self.intake.wal_segment_bytes < 1024 * 1024 {
            problems.push(ConfigProblem::new(
                "intake.wal-segment-bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.archive.target_file_bytes < 64 * 1024 {
            problems.push(ConfigProblem::new(
                "archive.target-file-bytes",
                "must be at least 64 KiB",
            ));
        }
        if self.archive.max_file_age < Duration::from_millis(100) {
            problems.push(ConfigProblem::new(
                "archive.max-file-age",
                "must be at least 100ms",
            ));
        }
        if self.archive.vacuum_after < Duration::from_secs(60) {
            problems.push(ConfigProblem::new(
                "archive.vacuum-after",
                "must be at least 1m (a hub commits a file moments after writing it; a shorter window could delete it in between)",
            ));
        }
        if self.archive.log_retention < Duration::from_secs(3600) {
            problems.push(ConfigProblem::new(
                "archive.log-retention",
                "must be at least 1h (a reader or writer holding an older version must still find its log)",
            ));
        }
        if !(1..=22).contains(&self.archive.zstd_level) {
            problems.push(ConfigProblem::new(
                "archive.zstd-level",
                "must be 1 (fastest) to 22 (smallest)",
            ));
        }
        if self.archive.max_open_files == 0 {
            problems.push(ConfigProblem::new(
                "archive.max-open-files",
                "must be at least 1",
            ));
        }
        if self.archive.max_buffered_rows < self.archive.row_group_rows {
            problems.push(ConfigProblem::new(
                "archive.max-buffered-rows",
                "must be at least archive.row-group-rows",
            ));
        }
        if self.archive.row_group_rows < 1024 {
            problems.push(ConfigProblem::new(
                "archive.row-group-rows",
                "must be at least 1024",
            ));
        }
        if self.scoring.warmup_readings < 2 {
            problems.push(ConfigProblem::new(
                "scoring.warmup-readings",
                "must be at least 2",
            ));
        }
        if let Some(t) = self.scoring.threshold
            && !(t.is_finite() && t > 0.0)
        {
            problems.push(ConfigProblem::new(
                "scoring.threshold",
                "must be a positive number",
            ));
        }
        if self.http.tokens.is_empty()
            && !self.http.allow_anonymous
            && !self.http.listen.ip().is_loopback()
        {
            problems.push(ConfigProblem::new(
                "http.tokens",
                "the API listens beyond loopback: configure [[http.tokens]] (or set http.allow-anonymous = true on purpose)",
            ));
        }
        for (i, t) in self.http.tokens.iter().enumerate() {
            if let Err(e) = t.digest() {
                problems.push(ConfigProblem::new(format!("http.tokens[{i}].token"), e));
            }
            if let Some(gw) = &t.gateway
                && !t.scopes.contains(&crate::api::access::Scope::Ingest)
            {
                problems.push(ConfigProblem::new(
                    format!("http.tokens[{i}].gateway"),
                    format!("binds the token to gateway '{gw}' but its scopes lack ingest"),
                ));
            }
            if t.scopes.is_empty() {
                problems.push(ConfigProblem::new(
                    format!("http.tokens[{i}].scopes"),
                    "at least one of read, ingest, admin",
                ));
            }
            if t.rate_limit.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                problems.push(ConfigProblem::new(
                    format!("http.tokens[{i}].rate-limit"),
                    "must be a positive number of requests per second",
                ));
            }
        }
        if self.mqtt.enabled
            && let Err(e) = iot_mqtt::LinkSecurity::new("mqtt", self.mqtt.security())
        {
            problems.push(ConfigProblem::new("mqtt", e.to_string()));
        }
        if let Some(Err(e)) = self.http.tls.as_ref().map(|t| t.load()) {
            problems.push(ConfigProblem::new("http.tls", e.to_string()));
        }
        let sql = &self.http.sql;
        if sql.memory_limit < 16 << 20 {
            problems.push(ConfigProblem::new(
                "http.sql.memory-limit",
                "at least 16 MiB (16777216)",
            ));
        }
        if sql.timeout.is_zero() {
            problems.push(ConfigProblem::new("http.sql.timeout", "more than zero"));
        }
        if !(1..=10_000_000).contains(&sql.max_rows) {
            problems.push(ConfigProblem::new("http.sql.max-rows", "1 to 10000000"));
        }
        if !(1..=64).contains(&sql.concurrent) {
            problems.push(ConfigProblem::new("http.sql.concurrent", "1 to 64"));
        }
        if !(1..=64).contains(&sql.threads) {
            problems.push(ConfigProblem::new("http.sql.threads", "1 to 64"));
        }
        if let Some(dir) = &self.scoring.records_model_dir
            && !dir.as_os_str().is_empty()
            && !dir.join("manifest.json").is_file()
        {
            problems.push(ConfigProblem::new(
                "scoring.records-model-dir",
                format!("{} has no manifest.json", dir.display()),
            ));
        }
        for (i, route) in self.scoring.routes.iter().enumerate() {
            if self.scoring.records_model_dir().is_some() && route.name == "records" {
                problems.push(ConfigProblem::new(
                    format!("scoring.routes[{i}].name"),
                    "`records` names the route of scoring.records-model-dir",
                ));
            }
            if !route.model_dir.join("manifest.json").is_file() {
                problems.push(ConfigProblem::new(
                    format!("scoring.routes[{i}].model-dir"),
                    format!("{} has no manifest.json", route.model_dir.display()),
                ));
            }
            for (key, glob) in [("device", &route.device), ("metric", &route.metric)] {
                if let Some(Err(e)) = glob.as_deref().map(crate::scoring::router::glob) {
                    problems.push(ConfigProblem::new(
                        format!("scoring.routes[{i}].{key}"),
                        format!("not a glob: {e}"),
                    ));
                }
            }
            if route.name.is_empty()
                || self.scoring.routes[..i]
                    .iter()
                    .any(|r| r.name == route.name)
            {
                problems.push(ConfigProblem::new(
                    format!("scoring.routes[{i}].name"),
                    "every route needs a unique name",
                ));
            }
        }
        if self.scoring.reload_interval < std::time::Duration::from_millis(50) {
            problems.push(ConfigProblem::new(
                "scoring.reload-interval",
                "must be at least 50ms",
            ));
        }
        if !self.scoring.model_dir.join("manifest.json").is_file() {
            problems.push(ConfigProblem::new(
                "scoring.model-dir",
                format!("{} has no manifest.json", self.scoring.model_dir.display()),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in deploy/ is what operators copy: it must stay valid.
    /// (Only its model path is machine-specific.)
    #[test]
    fn deploy_example_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hub.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let env = vec![(
            "HUB__SCORING__MODEL_DIR".to_string(),
            crate::test_models("novelty").display().to_string(),
        )];
        let cfg: HubConfig = schemas::settings::load_str(&text, ENV_PREFIX, env).unwrap();
        assert_eq!(cfg.hub_id, "hub_a");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = schemas::settings::load_str::<HubConfig>(
            "hub-id = 'bad id!'\ndata-dir = '/tmp/x'\n[archive]\nmax-file-age = '1ms'\ntarget-file-bytes = 10\n[scoring]\nmodel-dir = '/nonexistent'\n[http]\nlisten = 'nowhere'\n",
            ENV_PREFIX,
            Vec::new(),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"http.listen"), "{err}");
        let err = schemas::settings::load_str::<HubConfig>(
            "hub-id = 'bad id!'\ndata-dir = '/tmp/x'\n[archive]\nmax-file-age = '1ms'\ntarget-file-bytes = 10\nzstd-level = 0\n[scoring]\nmodel-dir = '/nonexistent'\n",
            ENV_PREFIX,
            Vec::new(),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        for key in [
            "hub-id",
            "archive.max-file-age",
            "archive.zstd-level",
            "archive.target-file-bytes",
            "scoring.model-dir",
        ] {
            assert!(paths.contains(&key), "{key} missing from {err}");
        }
    }

    #[test]
    fn a_route_glob_that_does_not_compile_is_a_configuration_problem() {
        let err = schemas::settings::load_str::<HubConfig>(
            &format!(
                "hub-id = 'h'\ndata-dir = '/tmp/x'\n[scoring]\nmodel-dir = {:?}\n\
                 [[scoring.routes]]\nname = 'r'\ndevice = 'pump-[1'\nmodel-dir = {:?}\n",
                crate::test_models("novelty"),
                crate::test_models("novelty")
            ),
            ENV_PREFIX,
            Vec::new(),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["scoring.routes[0].device"], "{err}");
        let router = crate::scoring::router::glob("pump-*").unwrap();
        assert!(
            router.is_match("pump-7") && router.is_match("pump-a/b") && !router.is_match("fan-1")
        );
    }
}
