//! The edge agent: runs on a gateway next to the devices.
//!
//! Data flow (each arrow a bounded channel, each box a task):
//!
//! ```text
//! gateway broker --MQTT--> [ingest: decode, filter] --readings+acks--> [batcher] --envelopes--> [uplink] --MQTT|HTTP--> hub
//!        ^                                                                          |
//!        +--------------- device PUBACKs, sent only after the hub's ack ------------+
//! ```
//!
//! - [`decode`], [`senml`], [`sparkplug`]: topic templates and payloads (JSON,
//!   SenML, Sparkplug B) -> readings (pure, no I/O, untrusted input).
//! - [`ingest`]: the MQTT subscription with manual acknowledgements.
//! - [`filter`]: declarative pre-filtering rules (validation, duplicates, rate
//!   limits, deadband with heartbeat).
//! - [`dead_letter`]: invalid messages, with the reason, to a topic or a file.
//! - [`dry_run`]: a recording through the decoders and rules, offline.
//! - [`batcher`]: groups readings by size or age into envelopes.
//! - [`uplink`]: sends envelopes to the hub, retries, and releases device acks.
//! - The MQTT plumbing shared with the hub (in-order acknowledgements,
//!   reconnect backoff, which hub takes this gateway's batches, topic
//!   names) is the `iot-mqtt` crate (`crates/mqtt`).
//! - [`metrics`]: the optional `/metrics` and `/health` endpoint.
//! - [`replay`]: recorded CSV/JSON Lines data back through a broker or
//!   straight to a hub.
//! - [`spool`]: the durable store-and-forward log between batcher and
//!   uplink (on `seglog`), and [`spool::service`], the thread that runs it.
//! - [`stats`]: counters for every stage, rendered as Prometheus text.
//! - [`config`]: the agent's TOML configuration.
//!
//! Guarantee (until the durable spool lands): a device message published with
//! QoS 1 is acknowledged to the broker only after every reading decoded from
//! it is durable on a hub. Nothing is held without bound: the uplink's
//! in-flight window limits unacknowledged data, and a full window stops the
//! agent reading from the broker socket (backpressure reaches the broker).
//!
//! This crate must never depend on parquet, tract or datafusion: it is built
//! for small ARM gateways.

pub mod agent;
pub mod batcher;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod dry_run;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod metrics;
pub mod redelivery;
pub mod replay;
pub mod senml;
pub mod sparkplug;
pub mod spool;
pub mod stats;
pub mod uplink;

pub use agent::{Agent, AgentHandle};
pub use config::EdgeConfig;
