//! The hub's answer to a batch, sent back over MQTT (`<prefix>/acks/<gateway>`)
//! or as the body of the HTTP response. JSON, so that any client can read it.

use serde::{Deserialize, Serialize};

/// What the hub did with a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum AckStatus {
    /// The batch is durable on the hub; the gateway may forget it.
    Durable,
    /// A batch with this `(gateway, incarnation, seq)` was already durable.
    /// The gateway may forget it too.
    Duplicate,
    /// The batch can never be accepted (malformed, over limits). Resending
    /// the same bytes will not help.
    Rejected { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    pub gateway: String,
    pub incarnation: u64,
    pub seq: u64,
    #[serde(flatten)]
    pub status: AckStatus,
}
