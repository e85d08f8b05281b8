//! The queue between two pipeline stages: bounded by the rows it holds
//! (one item always fits, however large), so a slow stage holds back the
//! one before it instead of letting memory grow. Either side hanging up
//! (drop) ends it: the receiver sees the end once the queue is empty, the
//! sender at its next send.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Input, NextStageGone, Output, Rows};

/// A queue between two stages, bounded by the rows it holds (one item
/// always fits, however large). Either side hanging up (drop) ends it.
pub(super) struct Handover<T> {
    state: Mutex<HandoverState<T>>,
    changed: Condvar,
    max_rows: usize,
}

struct HandoverState<T> {
    queue: std::collections::VecDeque<T>,
    rows: usize,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T: Rows> Handover<T> {
    /// The two ends of a new queue.
    pub(super) fn open(max_rows: usize) -> (HandoverSender<T>, HandoverReceiver<T>) {
        let handover = Arc::new(Self {
            state: Mutex::new(HandoverState {
                queue: std::collections::VecDeque::new(),
                rows: 0,
                sender_gone: false,
                receiver_gone: false,
            }),
            changed: Condvar::new(),
            max_rows,
        });
        (
            HandoverSender(Arc::clone(&handover)),
            HandoverReceiver(handover),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandoverState<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sending end of a [`Handover`].
pub(super) struct HandoverSender<T: Rows>(Arc<Handover<T>>);

impl<T: Rows> Output<T> for HandoverSender<T> {
    /// Waits for room; `Err` when the receiving stage has stopped.
    fn send(&self, record: T) -> Result<(), NextStageGone> {
        let rows = record.rows();
        let mut state = self.0.lock();
        while !state.receiver_gone && !state.queue.is_empty() && state.rows + rows > self.0.max_rows
        {
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.receiver_gone {
            return Err(NextStageGone);
        }
        state.rows += rows;
        state.queue.push_back(record);
        self.0.changed.notify_all();
        Ok(())
    }

    /// Whether the receiving stage has stopped.
    fn is_closed(&self) -> bool {
        self.0.lock().receiver_gone
    }
}

impl<T: Rows> Drop for HandoverSender<T> {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.changed.notify_all();
    }
}

/// The receiving end of a [`Handover`].
pub(super) struct HandoverReceiver<T: Rows>(Arc<Handover<T>>);

impl<T: Rows> Input<T> for HandoverReceiver<T> {
    fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.lock();
        loop {
            if let Some(record) = state.queue.pop_front() {
                state.rows -= record.rows();
                self.0.changed.notify_all();
                return Ok(record);
            }
            if state.sender_gone {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self
                .0
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl<T: Rows> Drop for HandoverReceiver<T> {
    fn drop(&mut self) {
        self.0.lock().receiver_gone = true;
        self.0.changed.notify_all();
    }
}
