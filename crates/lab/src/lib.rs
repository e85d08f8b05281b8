//! The lab: everything that exercises the pipeline but does not run in
//! production, kept out of the `inference-hub` and `edge-agent` binaries.
//!
//! - [`demo`]: the whole pipeline on one machine (embedded broker, hub, two
//!   edge agents, simulated devices): `cargo run --release -- demo`.
//! - [`broker`]: the embedded MQTT broker (rumqttd) the demo and the
//!   benchmarks use; [`devices`]: the device simulator (one MQTT client
//!   publishing what its caller generates, PUBACKs counted).
//! - [`mod@bench`]: agent and broker throughput; [`bench_partition`]: the
//!   hub away under load and back; [`bench_scoring`]: scoring throughput;
//!   [`bench_hub`]: the hub's throughput against the Python reference;
//!   [`bench_hostile`]: the hub's memory and health under hostile loads.
//! - [`eval`]: detection quality on labelled recordings (NAB, SKAB) through
//!   the production scoring path.
//! - [`rescore`]: an archived range through another model, into
//!   the `rescored` table; [`replay_parquet`]: Parquet recordings (our archive
//!   included) for replay through the agent library.
//! - [`pki`]: a CA and the broker's, hubs' and gateways' certificates
//!   (`iot-lab pki`, and the tests' certificates).

pub mod bench;
pub mod bench_archive_query;
pub mod bench_delta;
pub mod bench_hostile;
pub mod bench_hub;
pub mod bench_partition;
pub mod bench_scoring;
pub mod broker;
pub mod demo;
pub mod devices;
pub mod eval;
pub mod pki;
pub mod replay_parquet;
pub mod rescore;
