//! The loss ledger: data the hub had acknowledged and then lost (a damaged
//! WAL record, a WAL record that no longer decodes), kept until an operator
//! acknowledges it.
//!
//! A loss is logged at ERROR once, counted (`hub_wal_records_lost_total`),
//! and recorded here, in `<data-dir>/losses.json` (written atomically:
//! temporary file, fsync, rename), so it survives restarts. While the
//! ledger holds anything, `/health` answers `degraded` (still `200`: the hub
//! takes data) and `GET /v1/admin/losses` lists the entries;
//! `POST /v1/admin/losses/acknowledge` (admin scope) clears them.
//!
//! A ledger file that cannot be read is itself recorded as a loss of
//! unknown extent, never silently dropped.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LossEntry {
    /// When the hub found it (RFC 3339).
    pub found_at: String,
    /// What was lost, for an operator.
    pub what: String,
    /// The WAL positions lost: `[first, last]`, `last` absent when the
    /// extent is unknown (damage at the very end of the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_pos: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pos: Option<u64>,
    /// The lost batches (`gateway/incarnation/seq`) where they could be
    /// read from the damaged bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<String>,
    /// Where the damaged bytes were kept, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
}

impl LossEntry {
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            found_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            what: what.into(),
            first_pos: None,
            last_pos: None,
            batches: Vec::new(),
            quarantine: None,
        }
    }
}

#[derive(Debug)]
pub struct LossLedger {
    path: PathBuf,
    entries: Mutex<Vec<LossEntry>>,
}

impl LossLedger {
    /// Loads the ledger; a damaged file becomes one entry saying so.
    pub fn open(path: &Path) -> io::Result<Self> {
        let entries = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<LossEntry>>(&bytes) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "the loss ledger is unreadable; earlier losses are unknown");
                    vec![LossEntry::new(format!(
                        "the loss ledger {} was unreadable ({e}); earlier losses are unknown",
                        path.display()
                    ))]
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_owned(),
            entries: Mutex::new(entries),
        })
    }

    /// Adds losses and persists the ledger.
    pub fn record(&self, new: Vec<LossEntry>) -> io::Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let mut entries = self.entries.lock().expect("ledger lock");
        entries.extend(new);
        save(&self.path, &entries)
    }

    /// Entries not yet acknowledged.
    pub fn entries(&self) -> Vec<LossEntry> {
        self.entries.lock().expect("ledger lock").clone()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.lock().expect("ledger lock").is_empty()
    }

    /// An operator has seen the losses: clears and persists the ledger;
    /// returns how many entries were cleared.
    pub fn acknowledge(&self) -> io::Result<usize> {
        let mut entries = self.entries.lock().expect("ledger lock");
        let n = entries.len();
        entries.clear();
        save(&self.path, &entries)?;
        Ok(n)
    }
}

fn save(path: &Path, entries: &[LossEntry]) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(entries).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_persist_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("losses.json");
        let ledger = LossLedger::open(&path).unwrap();
        assert!(ledger.is_empty());
        let mut e = LossEntry::new("WAL record damaged");
        e.first_pos = Some(4);
        e.last_pos = Some(4);
        ledger.record(vec![e.clone()]).unwrap();
        let ledger = LossLedger::open(&path).unwrap();
        assert_eq!(ledger.entries(), vec![e]);
        assert_eq!(ledger.acknowledge().unwrap(), 1);
        assert!(LossLedger::open(&path).unwrap().is_empty());
    }

    #[test]
    fn an_unreadable_ledger_is_itself_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("losses.json");
        fs::write(&path, b"{not json").unwrap();
        let ledger = LossLedger::open(&path).unwrap();
        assert_eq!(ledger.entries().len(), 1);
        assert!(ledger.entries()[0].what.contains("unreadable"));
    }
}
