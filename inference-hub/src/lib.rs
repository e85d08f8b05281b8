//! The inference hub: takes batches from edge agents, makes them durable,
//! scores them (the novelty detectors of the `detect` crate, or ONNX
//! models) and archives them as Parquet.
//!
//! ```text
//! MQTT ($share/...) --+                                   +--> archive (Parquet, per table/date/hour)
//!                     +--> intake --> WAL (fsync) --> pipeline: score (tract) -+
//! HTTP POST ---------+       |  ack: durable|duplicate|rejected            +--> state --> API
//! ```
//!
//! - [`intake`]: envelope verification, dedup, WAL group commit; the
//!   acknowledgement is sent here, once the batch is durable. [`screen`]:
//!   what it refuses to hold (absurd times, series past the caps).
//! - [`wal`] and [`dedup`]: the durable log and the batch-identity index;
//!   [`losses`]: acknowledged data lost to damage, until an operator sees it.
//! - [`pipeline`], [`scoring`], [`model`]: per-series state and scoring;
//!   [`detector_state`]: the learned state saved and restored.
//! - [`archive`]: partitioned Parquet files with an atomic commit protocol.
//! - [`mqtt_intake`], [`api`]: the transports and the dashboard API.
//! - [`hub`]: start-up (recovery) and shutdown order.
//!
//! The demo, the benchmarks, evaluation, rescoring and Parquet replay live
//! in the `lab` crate (`crates/lab`), not in the production binary.

pub mod api;
pub mod archive;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod detector_state;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod intake;
pub mod losses;
pub mod model;
pub mod mqtt_intake;
mod names;
pub mod pipeline;
pub mod scoring;
pub mod screen;
pub mod state;
pub mod stats;
pub mod wal;

pub use config::HubConfig;
pub use hub::{HubHandle, start};

/// The repository's models, for this crate's tests (the binaries find
/// theirs from where they run: [`config::shipped_models_dir`]).
#[cfg(test)]
pub(crate) fn test_models(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name)
}
