//! Reconnecting: exponential backoff with jitter, reset only by a
//! connection that lasted, and a client whose socket does not wait for
//! delayed ACKs.

use std::time::Duration;

use rumqttc::AsyncClient;

/// Exponential backoff with +-50% jitter: `initial * 2^(attempt-1)`, capped.
pub fn backoff(attempt: u32, initial: Duration, cap: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    exp.min(cap).mul_f64(0.5 + fastrand::f64())
}

/// Default cap of [`Reconnect`]'s delays.
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// How long a connection must last before its success resets the backoff.
/// A connection that the broker accepts and that then fails at once (a
/// redelivered message the client cannot take, an ACL that closes it) is a
/// failure like any other, not a fresh start.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Reconnect backoff of one MQTT connection: 100 ms doubling up to a cap,
/// with +-50% jitter so that a fleet does not reconnect in lockstep; reset
/// only by a connection that stayed up [`STABLE_CONNECTION`].
#[derive(Debug)]
pub struct Reconnect {
    cap: Duration,
    failures: u32,
    connected_at: Option<std::time::Instant>,
}

impl Reconnect {
    pub fn new(cap: Duration) -> Self {
        Self {
            cap,
            failures: 0,
            connected_at: None,
        }
    }

    /// The broker accepted the connection (CONNACK).
    pub fn connected(&mut self) {
        self.connected_at = Some(std::time::Instant::now());
    }

    /// The connection failed: how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= STABLE_CONNECTION)
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        backoff(self.failures, Duration::from_millis(100), self.cap)
    }
}

/// Creates a client whose socket has Nagle's algorithm off. Request/answer
/// exchanges (a batch and its ack, a message and its PUBACK) otherwise wait
/// for the peer's delayed ACK, about 40 ms on Linux, per round trip.
pub fn client(opts: rumqttc::MqttOptions, capacity: usize) -> (AsyncClient, rumqttc::EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(opts, capacity);
    eventloop.network_options.set_tcp_nodelay(true);
    (client, eventloop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_fails_at_once_keeps_backing_off() {
        let cap = Duration::from_secs(8);
        let mut r = Reconnect::new(cap);
        let mut delays = Vec::new();
        for _ in 0..8 {
            r.connected();
            delays.push(r.failed());
        }
        // 100 ms doubling: the eighth attempt waits at least half the cap.
        assert!(delays[7] >= cap.mul_f64(0.5), "{delays:?}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (initial, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..30 {
            let d = backoff(attempt, initial, cap);
            assert!(d <= cap.mul_f64(1.5), "attempt {attempt}: {d:?}");
            let expected = initial.saturating_mul(1 << (attempt - 1).min(20)).min(cap);
            assert!(d >= expected.mul_f64(0.5), "attempt {attempt}: {d:?}");
        }
    }
}
