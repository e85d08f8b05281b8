//! The system tests: end-to-end and fault runs of the whole pipeline (hub
//! and agent processes, the embedded broker and Mosquitto, moto for S3) on
//! real sockets and real files. Binaries come from `target/<profile>/`
//! (`cargo test --workspace` builds them; run `cargo build -p inference-hub
//! -p edge-agent` before testing this crate alone).

use iot_testkit::{harness, hub_process};

mod arm;
mod crash;
mod e2e;
mod edge_faults;
mod guarantees;
mod hostile;
mod installed;
mod mosquitto;
mod s3;
mod service;
mod tls;
