//! MQTT plumbing shared by the edge agent and the inference hub, so that
//! neither borrows the other's internals.
//!
//! - [`ack`]: acknowledgements of received messages released in arrival
//!   order ([`OrderedAcker`], [`PendingAck`]); a reconnect starts a new
//!   generation.
//! - [`reconnect`]: exponential backoff with jitter ([`backoff`],
//!   [`Reconnect`]) and a client with Nagle off ([`client`]).
//! - [`session`]: one MQTT session (subscriptions after every CONNACK,
//!   generations, backoff after failures) that each connection drives.
//! - [`routing`]: hub announcements, which hub owns a gateway (rendezvous
//!   hashing over the announced hubs, silent hubs passed over) and every
//!   topic name of the edge-to-hub exchange.
//! - [`security`]: TLS and credentials of every MQTT connection, re-read
//!   before each reconnection ([`LinkSecurity`]).
//! - [`signal`]: the stop signal of both binaries.
//! - [`service`]: readiness, watchdog and stopping notifications to the
//!   service manager (systemd `Type=notify`).

pub mod ack;
pub mod reconnect;
pub mod routing;
pub mod security;
pub mod service;
pub mod session;
pub mod signal;

pub use ack::{OrderedAcker, PendingAck};
pub use reconnect::{RECONNECT_MAX, Reconnect, STABLE_CONNECTION, backoff, client};
pub use security::{LinkSecurity, LinkSettings};
pub use session::{Session, SessionEvent};
