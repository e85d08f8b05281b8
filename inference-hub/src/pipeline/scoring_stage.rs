//! The scoring stage (`hub-pipeline` thread): scores each durable batch
//! with the routed models, reloads changed model directories between
//! batches, and saves the detectors' state (pending snapshots, committed
//! once the archive's low-water mark passes them; see
//! [`crate::detector_state`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use std::collections::{BTreeSet, HashSet};

use super::{
    DetectorStateSaving, Ended, ScoredRecord, Stage, StageFailed, StateRecord, StateSharing,
    add_ns, thread_cpu,
};
use crate::detector_state::shared;
use crate::intake::DurableBatch;
use crate::scoring::Router;
use crate::stats::HubStats;

pub(super) struct ScoringStage {
    pub(super) scorer: Router,
    pub(super) reload_interval: Duration,
    pub(super) next_reload_check: Instant,
    pub(super) stats: Arc<HubStats>,
    pub(super) saving: Option<Saving>,
    pub(super) sharing: Option<Sharing>,
}

/// The scoring stage's side of sharing the detectors' state with other
/// hubs (see [`crate::detector_state::shared`]).
pub(super) struct Sharing {
    sharing: StateSharing,
    next_at: Option<Instant>,
    /// Gateways whose shared state was looked for in this run.
    arrived: HashSet<Arc<str>>,
    /// Gateways scored since their state was last written.
    changed: BTreeSet<Arc<str>>,
    /// After a timeout: the store is left alone until then.
    unreachable_until: Option<Instant>,
}

impl Sharing {
    pub(super) fn new(sharing: StateSharing) -> Self {
        Self {
            next_at: sharing.interval.map(|i| Instant::now() + i),
            sharing,
            arrived: HashSet::new(),
            changed: BTreeSet::new(),
            unreachable_until: None,
        }
    }

    fn unreachable(&self) -> bool {
        self.unreachable_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Before a gateway's first batch of this run is scored: takes over what
    /// another hub learned of its devices (what this hub has stays).
    fn arrive(&mut self, scorer: &mut Router, gateway: &str, stats: &HubStats) {
        if self.arrived.contains(gateway) {
            return;
        }
        self.arrived.insert(Arc::from(gateway));
        if self.unreachable() {
            stats.shared_state_failures.fetch_add(1, Relaxed);
            tracing::warn!(
                gateway,
                "the shared detector state is unreachable; this gateway's series learn anew"
            );
            return;
        }
        match self
            .sharing
            .shared
            .read_into(scorer, gateway, self.sharing.max_bytes)
        {
            Ok(0) => {}
            Ok(taken) => {
                stats.shared_state_taken.fetch_add(taken as u64, Relaxed);
                tracing::info!(
                    gateway,
                    series = taken,
                    "took over the learned state another hub shared for this gateway"
                );
            }
            Err(e) => {
                stats.shared_state_failures.fetch_add(1, Relaxed);
                if let crate::detector_state::SnapshotError::Io(io) = &e
                    && shared::timed_out(io)
                {
                    self.unreachable_until = Some(Instant::now() + shared::UNREACHABLE_PAUSE);
                }
                tracing::warn!(gateway, error = %schemas::error_chain(&e), "cannot use the shared detector state of this gateway; its series learn anew");
            }
        }
    }

    /// Writes the state of the gateways scored since, when due (or forced).
    fn write_if_due(&mut self, scorer: &Router, stats: &HubStats, force: bool) {
        let due = self.next_at.is_some_and(|at| Instant::now() >= at);
        if !force && (!due || self.unreachable()) {
            return;
        }
        self.next_at = self.sharing.interval.map(|i| Instant::now() + i);
        let mut pending = std::mem::take(&mut self.changed).into_iter();
        while let Some(gateway) = pending.next() {
            match self.sharing.shared.write(scorer, &gateway) {
                Ok(_) => {
                    stats.shared_state_writes.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    stats.shared_state_failures.fetch_add(1, Relaxed);
                    tracing::warn!(gateway = %gateway, error = %e, "cannot share this gateway's detector state; tried again at the next interval");
                    self.changed.insert(gateway);
                    if shared::timed_out(&e) {
                        // Unreachable: the rest wait too (one timeout, not
                        // one per gateway).
                        self.unreachable_until = Some(Instant::now() + shared::UNREACHABLE_PAUSE);
                        self.changed.extend(pending);
                        break;
                    }
                }
            }
        }
    }
}

/// The scoring stage's side of saving the detectors' state.
pub(super) struct Saving {
    saving: DetectorStateSaving,
    next_at: Instant,
    /// Positions of the pending snapshots written by this run.
    pending: Vec<u64>,
    /// The last batch scored, and the position of the last state saved.
    last_scored: Option<u64>,
    last_saved: Option<u64>,
    archive_low_water: Arc<AtomicU64>,
}

impl Saving {
    /// Saving as `saving` says, starting from the restored snapshot; the
    /// archive's low-water mark tells which pending snapshots to commit.
    pub(super) fn new(saving: DetectorStateSaving, archive_low_water: Arc<AtomicU64>) -> Self {
        Self {
            next_at: Instant::now() + saving.interval,
            pending: Vec::new(),
            last_scored: None,
            last_saved: saving.restored_through,
            archive_low_water,
            saving,
        }
    }
}

impl Saving {
    /// Writes a pending snapshot when one is due and the state changed.
    fn save_if_due(&mut self, scorer: &Router, stats: &HubStats, force: bool) {
        if !(force || Instant::now() >= self.next_at) {
            return;
        }
        self.next_at = Instant::now() + self.saving.interval;
        let Some(position) = self.last_scored.filter(|p| Some(*p) != self.last_saved) else {
            return;
        };
        let started = Instant::now();
        match self.saving.store.write_pending(position, scorer) {
            Ok(bytes) => {
                self.pending.push(position);
                self.last_saved = Some(position);
                stats.detector_state_saves.fetch_add(1, Relaxed);
                stats.detector_state_bytes.store(bytes, Relaxed);
                tracing::debug!(position, bytes, took = ?started.elapsed(), "detector state saved");
            }
            Err(e) => {
                stats.detector_state_save_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot save the detector state; a restart would learn from an older one (or anew)");
            }
        }
        self.update_floor();
    }

    /// Commits the pending snapshots the archive has passed.
    fn promote(&mut self) {
        let low_water = self.archive_low_water.load(Relaxed);
        if !self.pending.iter().any(|&p| p < low_water) {
            return;
        }
        match self.saving.store.promote(low_water) {
            Ok(_) => self.pending.retain(|&p| p >= low_water),
            Err(e) => tracing::warn!(error = %e, "cannot commit a detector state snapshot"),
        }
        self.update_floor();
    }

    /// The WAL keeps what follows the oldest snapshot that may be restored.
    fn update_floor(&self) {
        let committed = self.saving.store.newest_committed().ok().flatten();
        let oldest = committed
            .into_iter()
            .chain(self.pending.iter().copied())
            .min();
        self.saving
            .wal_floor
            .store(oldest.map_or(u64::MAX, |p| p + 1), Relaxed);
    }
}

impl Stage for ScoringStage {
    type In = DurableBatch;
    type Out = StateRecord;
    type Done = ();

    /// Between batches: a batch is scored by one model version only.
    fn on_tick(&mut self) -> Result<(), StageFailed> {
        if Instant::now() >= self.next_reload_check {
            self.next_reload_check = Instant::now() + self.reload_interval;
            self.reload_models();
        }
        if let Some(saving) = &mut self.saving {
            saving.promote();
            saving.save_if_due(&self.scorer, &self.stats, false);
        }
        if let Some(sharing) = &mut self.sharing {
            sharing.write_if_due(&self.scorer, &self.stats, false);
        }
        Ok(())
    }

    fn process(&mut self, batch: DurableBatch) -> Result<Option<StateRecord>, StageFailed> {
        let restored = self.saving.as_ref().and_then(|s| s.saving.restored_through);
        if restored.is_some_and(|through| batch.pos <= through) {
            // Absorbed by the restored state and archived.
            return Ok(None);
        }
        let pos = batch.pos;
        if let Some(sharing) = &mut self.sharing {
            let gateway = &batch.batch.header.gateway;
            sharing.arrive(&mut self.scorer, gateway, &self.stats);
            if !sharing.changed.contains(gateway.as_str()) {
                sharing.changed.insert(Arc::from(gateway.as_str()));
            }
        }
        let record = self.score(batch);
        if let Some(saving) = &mut self.saving {
            saving.last_scored = Some(pos);
        }
        Ok(Some(record))
    }

    /// Shutting down: the last state, committed by the hub once the
    /// archive has closed its files. (When the next stage is gone, the
    /// archive failed: nothing more is saved, the WAL keeps the batches.)
    fn on_close(mut self, ended: Ended) {
        if ended == Ended::InputClosed
            && let Some(saving) = &mut self.saving
        {
            saving.save_if_due(&self.scorer, &self.stats, true);
        }
        if ended == Ended::InputClosed
            && let Some(sharing) = &mut self.sharing
        {
            sharing.write_if_due(&self.scorer, &self.stats, true);
        }
    }
}

impl ScoringStage {
    fn score(&mut self, durable: DurableBatch) -> StateRecord {
        let now_us = chrono::Utc::now().timestamp_micros();
        let started = thread_cpu();
        let routed = self.scorer.score(&durable.batch, now_us);
        add_ns(&self.stats.pipeline_score_ns, started, thread_cpu());
        let out = routed.live;
        if let Some(e) = &out.model_error {
            self.stats.scoring_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, seq = durable.batch.header.seq, "model failed; batch archived unscored");
        }
        let rows = out.scored.num_rows() as u64;
        let unscored = out
            .scored
            .column_by_name(schemas::tables::SCORE)
            .map_or(0, |c| arrow_array::Array::null_count(c.as_ref()));
        self.stats
            .readings_scored
            .fetch_add(rows - unscored as u64, Relaxed);
        self.stats
            .anomalies
            .fetch_add(out.events.len() as u64, Relaxed);
        self.stats
            .series
            .store(self.scorer.series_count() as u64, Relaxed);
        StateRecord {
            record: ScoredRecord {
                pos: durable.pos,
                scored: out.scored,
                anomalies: out.anomalies,
                shadow: routed.shadow,
            },
            events: out.events,
            now_us,
            gateway: durable.batch.header.gateway,
        }
    }

    fn reload_models(&mut self) {
        for reload in self.scorer.reload_changed() {
            match reload.result {
                Ok(version) => {
                    self.stats.model_reloads.fetch_add(1, Relaxed);
                    tracing::info!(route = %reload.route, model = %version, "model reloaded; the next batch is scored by it");
                }
                Err(e) => {
                    self.stats.model_reload_failures.fetch_add(1, Relaxed);
                    tracing::error!(route = %reload.route, error = %e, "model reload failed; the previous model keeps scoring");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::s3::S3Settings;
    use crate::config::ScoringSettings;
    use crate::detector_state::shared::SharedState;

    /// A bucket that takes connections and never answers: the first read
    /// times out, the gateways after it do not wait; a write round stops at
    /// its first timeout and keeps the rest for later.
    #[test]
    fn an_unreachable_bucket_costs_one_timeout_not_one_per_gateway() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for connection in listener.incoming() {
                held.push(connection);
            }
        });
        let s3 = S3Settings {
            bucket: "telemetry".into(),
            prefix: "archive".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: "us-east-1".into(),
            allow_http: true,
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            upload: Default::default(),
        };
        let timeout = Duration::from_millis(300);
        let shared = SharedState::bucket(&s3).unwrap().with_timeout(timeout);
        let mut sharing = Sharing::new(StateSharing {
            shared,
            interval: None,
            max_bytes: 1 << 20,
        });
        let mut router = Router::new(&ScoringSettings {
            model_dir: crate::test_models("novelty"),
            records_model_dir: Some("".into()),
            ..ScoringSettings::default()
        })
        .unwrap();
        router.follow_gateways();
        let stats = HubStats::default();
        let started = Instant::now();
        for g in 0..40 {
            sharing.arrive(&mut router, &format!("gw-{g}"), &stats);
        }
        let took = started.elapsed();
        assert_eq!(stats.shared_state_failures.load(Relaxed), 40);
        assert!(
            took >= timeout && took < timeout * 10,
            "40 arrivals took {took:?}: one timeout, not one each"
        );
        // Writes at a graceful stop: one timeout, the rest kept.
        sharing.changed = (0..40).map(|g| Arc::from(format!("gw-{g}"))).collect();
        let started = Instant::now();
        sharing.write_if_due(&router, &stats, true);
        let took = started.elapsed();
        assert!(took < timeout * 10, "the write round took {took:?}");
        assert_eq!(sharing.changed.len(), 40, "every gateway still to write");
        assert!(sharing.unreachable());
    }
}
