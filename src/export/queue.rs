//! The bounded upload queue: the period loop pushes, the uploader pops;
//! when full, the oldest batch is dropped (the newest data is the most
//! useful, and memory stays bounded however long the agent is away).
//!
//! A `Mutex<VecDeque>` and a `Notify`: one push a period and one pop per
//! upload, so the lock is never contended in a way that matters, and it is
//! never held across an await.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::Batch;

/// Batches waiting for the uploader.
#[derive(Debug)]
pub(crate) struct Queue {
    batches: Mutex<VecDeque<Batch>>,
    capacity: usize,
    ready: Notify,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue {
            batches: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(1),
            ready: Notify::new(),
        }
    }

    /// Adds a batch; returns the oldest one if it had to be dropped.
    pub fn push(&self, batch: Batch) -> Option<Batch> {
        let dropped = {
            let mut q = self.batches.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = if q.len() >= self.capacity {
                q.pop_front()
            } else {
                None
            };
            q.push_back(batch);
            dropped
        };
        // A stored permit: a pop that is not waiting yet still sees it.
        self.ready.notify_one();
        dropped
    }

    /// The oldest batch, if any.
    pub fn try_pop(&self) -> Option<Batch> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// The newest batch, if any (at stop, the last period goes first).
    pub fn try_pop_newest(&self) -> Option<Batch> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_back()
    }

    /// Waits for a batch.
    pub async fn pop(&self) -> Batch {
        loop {
            if let Some(b) = self.try_pop() {
                return b;
            }
            self.ready.notified().await;
        }
    }

    /// Batches waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn batch(seq: u64) -> Batch {
        Batch {
            seq,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            files: Vec::new(),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let q = Queue::new(2);
        assert!(q.push(batch(0)).is_none());
        assert!(q.push(batch(1)).is_none());
        assert_eq!(q.push(batch(2)).map(|b| b.seq), Some(0));
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop().map(|b| b.seq), Some(1));
        assert_eq!(q.try_pop().map(|b| b.seq), Some(2));
        assert!(q.try_pop().is_none());
        q.push(batch(3));
        q.push(batch(4));
        assert_eq!(q.try_pop_newest().map(|b| b.seq), Some(4));
        assert_eq!(q.try_pop().map(|b| b.seq), Some(3));
    }

    #[test]
    fn pop_waits_for_a_push() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let q = std::sync::Arc::new(Queue::new(5));
        let q2 = q.clone();
        let seq = rt.block_on(async move {
            let waiter = tokio::spawn(async move { q2.pop().await.seq });
            tokio::task::yield_now().await;
            q.push(batch(7));
            waiter.await.unwrap()
        });
        assert_eq!(seq, 7);
    }
}
