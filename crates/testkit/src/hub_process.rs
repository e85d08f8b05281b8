//! A hub run as a separate process (the release or test binary) over HTTP:
//! what a kill -9 test needs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use schemas::ReadingColumns;

/// A hub configuration in `dir` (data under `dir/hub`), with its HTTP
/// address. `extra` is appended to the TOML: dotted keys
/// (`archive.max-file-age = "1h"`), no table headers.
#[derive(Debug)]
pub struct HubProcessConfig {
    pub config: PathBuf,
    pub data: PathBuf,
    pub http: String,
    pub log: PathBuf,
}

impl HubProcessConfig {
    pub fn write(dir: &Path, hub_id: &str, data: PathBuf, extra: &str) -> Self {
        let http = format!("127.0.0.1:{}", lab::broker::free_port());
        let config = dir.join(format!("{hub_id}.toml"));
        std::fs::write(
            &config,
            format!(
                "hub-id = \"{hub_id}\"\ndata-dir = {:?}\nmqtt.enabled = false\nhttp.listen = \"{http}\"\n\
                 scoring.model-dir = {:?}\nscoring.records-model-dir = {:?}\nscoring.warmup-readings = 20\n{extra}\n",
                data.display().to_string(),
                crate::models("novelty"),
                crate::models("state-monitor")
            ),
        )
        .unwrap();
        Self {
            config,
            data,
            http,
            log: dir.join(format!("{hub_id}.log")),
        }
    }

    pub fn start(&self) -> HubChild {
        self.start_with(Command::new(crate::hub_binary()))
    }

    /// Starts the hub with at most `files` open descriptors (soft and hard
    /// limit, as `ulimit -n` on a default system).
    pub fn start_with_file_limit(&self, files: u64) -> HubChild {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={files}:{files}"))
            .arg(crate::hub_binary());
        self.start_with(command)
    }

    fn start_with(&self, mut command: Command) -> HubChild {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        command
            .args(["--config", self.config.to_str().unwrap(), "run"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map(HubChild)
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Held by the tests that run whole hub processes through long sequences,
/// so that two of them do not starve each other of the CPU (their clients
/// time out after 10 s) when the test binary runs tests in parallel.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A hub process, killed if the test ends without stopping it.
#[derive(Debug)]
pub struct HubChild(Child);

impl Drop for HubChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM and wait: a graceful stop must succeed.
pub fn terminate(mut hub: HubChild, cfg: &HubProcessConfig) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(hub.0.id().to_string())
        .status();
    assert!(
        hub.0.wait().unwrap().success(),
        "graceful stop failed: {}",
        cfg.log_text()
    );
}

/// SIGKILL: no chance to clean up.
pub fn kill(hub: HubChild) {
    drop(hub);
}

pub async fn wait_healthy(client: &reqwest::Client, http: &str) {
    for _ in 0..800 {
        if client
            .get(format!("http://{http}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("hub did not become healthy");
}

pub async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    let resp = client.get(url).send().await.unwrap();
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

/// An envelope of `rows` readings whose values encode `(seq, row)`.
pub fn envelope(gateway: &str, incarnation: u64, seq: u64, rows: usize) -> Vec<u8> {
    let mut cols = ReadingColumns::default();
    for r in 0..rows {
        let ts = 1_767_225_600_000_000 + (seq as i64 * 60 + r as i64) * 1_000_000;
        cols.push(
            &format!("dev{}", r % 4),
            "load",
            ts,
            seq as f64 * 1000.0 + r as f64,
        );
    }
    schemas::envelope::encode(gateway, incarnation, seq, &cols.finish())
        .unwrap()
        .1
}

/// Posts one envelope; Some(status) when the hub answered.
pub async fn post(client: &reqwest::Client, http: &str, body: Vec<u8>) -> Option<String> {
    let resp = client
        .post(format!("http://{http}/v1/batches"))
        .body(body)
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
    body["status"].as_str().map(str::to_owned)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
