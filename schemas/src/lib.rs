//! The shared vocabulary of the pipeline: what a reading is, how readings,
//! scored readings and anomaly events look as Arrow tables, and the batch
//! envelope that carries readings from an edge agent to a hub.
//!
//! This crate is deliberately small and synchronous: no tokio, no network, no
//! Parquet, no ONNX. Both the edge agent (which must stay small for ARM
//! gateways) and the hub depend on it, so everything here is something both
//! sides must agree on byte for byte.
//!
//! - [`reading`]: the row-level model and a columnar builder for it.
//! - [`tables`]: the Arrow schemas of the three tables and their column names.
//! - [`envelope`]: the versioned wire format edge -> hub, with a decoder that
//!   treats its input as untrusted.
//! - [`ack`]: the hub's per-batch answer (durable, duplicate, rejected).
//! - [`settings`]: layered TOML + environment configuration with a validator
//!   that reports every problem at once, shared by both binaries.

pub mod ack;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod reading;
pub mod settings;
pub mod tables;

pub use envelope::{BatchHeader, DecodeError, DecodeLimits, DecodedBatch, EncodeError};
pub use reading::{Reading, ReadingColumns};

/// An error and all its sources on one line (`outer: inner: root`), for the
/// one place an error is logged or printed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
