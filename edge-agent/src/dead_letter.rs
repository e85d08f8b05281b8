//! Where invalid device messages go, with the reason, so an operator can see
//! why data was refused: a topic on the gateway broker and/or a bounded file.
//!
//! Each dead letter is one JSON object:
//! `{"received_at": RFC 3339, "topic": ..., "reason": ..., "size": bytes, "payload": ...}`,
//! the payload (its first 4 KiB) as text when it is UTF-8 and as hex
//! otherwise. The file is
//! JSON Lines; when it would pass `max-bytes` it is renamed to `<file>.1`
//! (replacing the previous one) and a new file is started, so at most about
//! twice `max-bytes` is ever used. Dead letters are best effort: a full MQTT
//! queue or a file error drops the dead letter (counted), never the pipeline.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};

use crate::stats::EdgeStats;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct DeadLetterSettings {
    /// Publish dead letters (QoS 0) to this topic on the gateway broker.
    pub topic: Option<String>,
    /// Append dead letters to this JSON Lines file.
    pub file: Option<PathBuf>,
    /// Size at which the file is rotated (default 10 MiB).
    pub max_bytes: Option<u64>,
}

#[derive(Debug)]
pub struct DeadLetters {
    settings: DeadLetterSettings,
    client: Option<AsyncClient>,
    file: Option<(File, u64)>,
    stats: Arc<EdgeStats>,
}

const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Payload bytes kept in a dead letter.
const MAX_PAYLOAD_SHOWN: usize = 4096;

impl DeadLetters {
    pub fn new(
        settings: DeadLetterSettings,
        client: Option<AsyncClient>,
        stats: Arc<EdgeStats>,
    ) -> Self {
        Self {
            client: settings.topic.as_ref().and(client),
            settings,
            file: None,
            stats,
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.topic.is_some() || self.settings.file.is_some()
    }

    pub fn send(&mut self, topic: &str, reason: &str, payload: &[u8]) {
        if !self.enabled() {
            return;
        }
        // A dead letter shows what came, not all of it: an oversized
        // message is cut to its first bytes (its size is recorded).
        let size = payload.len();
        let payload = &payload[..size.min(MAX_PAYLOAD_SHOWN)];
        let payload_text = match std::str::from_utf8(payload) {
            Ok(t) => t.to_owned(),
            Err(_) => payload.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let record = serde_json::json!({
            "received_at": chrono::Utc::now().to_rfc3339(),
            "topic": topic,
            "reason": reason,
            "size": size,
            "payload": payload_text,
        });
        let mut line = record.to_string();
        line.push('\n');
        let mut delivered = false;
        if let (Some(client), Some(dl_topic)) = (&self.client, &self.settings.topic) {
            delivered |= client
                .try_publish(
                    dl_topic.clone(),
                    QoS::AtMostOnce,
                    false,
                    line.trim_end().to_owned(),
                )
                .is_ok();
        }
        if self.settings.file.is_some() {
            match self.append(line.as_bytes()) {
                Ok(()) => delivered = true,
                Err(e) => tracing::warn!(error = %e, "cannot write the dead-letter file"),
            }
        }
        let counter = if delivered {
            &self.stats.dead_letters
        } else {
            &self.stats.dead_letters_dropped
        };
        counter.fetch_add(1, Relaxed);
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let path = self.settings.file.clone().expect("file configured");
        let max = self.settings.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if self
            .file
            .as_ref()
            .is_some_and(|(_, size)| size + line.len() as u64 > max)
        {
            self.file = None;
            let mut rotated = path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&path, rotated)?;
        }
        if self.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            let size = f.metadata()?.len();
            self.file = Some((f, size));
        }
        let (f, size) = self.file.as_mut().expect("opened above");
        f.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_dead_letters_carry_the_reason_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let stats = Arc::new(EdgeStats::default());
        let settings = DeadLetterSettings {
            topic: None,
            file: Some(path.clone()),
            max_bytes: Some(2_000),
        };
        let mut dl = DeadLetters::new(settings, None, Arc::clone(&stats));
        dl.send("sensors/a/b", "invalid_json", b"{not json");
        dl.send("sensors/a/b", "no_numeric_value", &[0xff, 0x00]);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["reason"], "invalid_json");
        assert_eq!(first["payload"], "{not json");
        let second: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(second["payload"], "ff00");
        for _ in 0..100 {
            dl.send("sensors/a/b", "invalid_json", b"{not json");
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 2_000, "file grew to {size}");
        assert!(dir.path().join("dead.jsonl.1").is_file());
        assert_eq!(stats.dead_letters.load(Relaxed), 102);
    }
}
