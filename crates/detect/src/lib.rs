//! Online anomaly detectors whose state can be saved and restored.
//!
//! * [`novelty`]: the univariate family for single-metric series (an
//!   adaptive-resonance novelty ensemble, a transition memory through an
//!   anomaly likelihood, and the spatial rule), one score in `[0, 1]` per
//!   reading.
//! * [`state_monitor`]: the multivariate family for record-shaped devices
//!   (a MEWMA chart, Hotelling's T² and the squared prediction error Q of a
//!   PCA model, and a causal MSET estimate, each against its limit, with
//!   slow metrics judged by their drift), one decision per record.
//!
//! Both are causal (a reading is judged by what came before it) and keep
//! bounded state that serialises with serde, so a hub can snapshot it and
//! pick up where it left off. `../shared/design/detection.md` is the
//! specification they are written from.

pub mod novelty;
pub mod state_monitor;
mod stats;

pub use novelty::{Novelty, NoveltyConfig, NoveltyScore};
pub use state_monitor::{StateMonitor, StateMonitorConfig, StateVerdict};
