//! The state stage (`hub-state` thread): records each scored batch in the
//! in-memory state the API serves (devices' latest values, newest points,
//! the live stream, recent anomalies), then hands it to the archive stage.
//! After a pipeline rebuild the WAL is replayed from its start: what the
//! API already shows is not recorded twice.

use std::sync::Arc;

use super::{Ended, ScoredRecord, Stage, StageFailed, StateRecord, add_ns, thread_cpu};
use crate::state::HubState;
use crate::stats::HubStats;

/// Rows waiting between scoring and the state (a few batches).
pub(super) const STATE_QUEUE_ROWS: usize = 64 * 1024;

pub(super) struct StateStage {
    pub(super) state: Arc<HubState>,
    pub(super) stats: Arc<HubStats>,
}

impl Stage for StateStage {
    type In = StateRecord;
    type Out = ScoredRecord;
    type Done = ();

    fn process(&mut self, item: StateRecord) -> Result<Option<ScoredRecord>, StageFailed> {
        let StateRecord {
            record,
            events,
            now_us,
            gateway,
        } = item;
        if record.pos >= self.state.recorded_until() {
            let started = thread_cpu();
            self.state.record(&record.scored, events, now_us, &gateway);
            self.state.recorded_through(record.pos);
            add_ns(&self.stats.pipeline_state_ns, started, thread_cpu());
        }
        Ok(Some(record))
    }

    fn on_close(self, _: Ended) {}
}
