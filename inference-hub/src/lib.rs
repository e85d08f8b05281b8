//! The inference hub: takes batches from edge agents, makes them durable,
//! scores them with an ONNX model and archives them as Parquet.
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
//! - [`pipeline`], [`scoring`], [`model`]: per-series state and ONNX scoring.
//! - [`archive`]: partitioned Parquet files with an atomic commit protocol.
//! - [`mqtt_intake`], [`api`]: the transports and the dashboard API.
//! - [`hub`]: start-up (recovery) and shutdown order.
//! - [`replay_parquet`]: Parquet recordings (our archive included) for
//!   replay through the agent library.
//! - [`rescore`]: an archived range through another model, into
//!   `table=rescored`.
//! - [`eval`]: detection quality on labelled recordings (NAB, SKAB) through
//!   the production scoring path.
//! - [`broker`], [`demo`], [`bench`]: the embedded broker, the one-command
//!   demo and the throughput benchmark.

pub mod api;
pub mod archive;
pub mod bench;
pub mod bench_hostile;
pub mod broker;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod detector_state;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod intake;
pub mod losses;
pub mod model;
pub mod mqtt_intake;
mod names;
pub mod pipeline;
pub mod replay_parquet;
pub mod rescore;
pub mod scoring;
pub mod screen;
pub mod state;
pub mod stats;
pub mod wal;

pub use config::HubConfig;
pub use hub::{HubHandle, start};
