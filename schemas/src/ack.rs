//! The hub's answer to a batch, sent back over MQTT (`<prefix>/acks/<gateway>`)
//! or as the body of the HTTP response. JSON, so that any client can read it.
//!
//! An answer names the batch by its identity *and* its content: the
//! envelope's CRC32C as the hub read it. A gateway acts on an answer (deletes
//! a spooled batch, releases device acknowledgements) only when both match
//! the batch it sent, so an answer forged by a client that never saw the
//! batch, or one meant for other bytes, releases nothing (see
//! [`BatchAck::names`]).

use serde::{Deserialize, Serialize};

/// What the hub did with a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchAck {
    pub gateway: String,
    pub incarnation: u64,
    pub seq: u64,
    /// The envelope's CRC32C (its preamble's checksum field) as received.
    pub crc32c: u32,
    #[serde(flatten)]
    pub status: AckStatus,
    /// With `durable`: readings of the batch the hub refused to hold (the
    /// rest is durable), and why. They will never be accepted as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
}

/// Readings of a durable batch the hub did not keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dropped {
    pub rows: u32,
    pub reason: String,
}

impl BatchAck {
    /// Whether this answer is about exactly these envelope bytes.
    pub fn names(&self, envelope: &[u8]) -> bool {
        crate::envelope::content_crc(envelope) == Some(self.crc32c)
    }
}
