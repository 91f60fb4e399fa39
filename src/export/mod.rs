//! Getting a period's profiles out of the process: to a folder, to a
//! Datadog agent or the agentless intake, or both.
//!
//! A [`Batch`] is one period's files. The period loop writes it to the
//! output folder at once ([`dir`]), whether or not uploads work, then
//! pushes it on the bounded [`queue`]; the uploader task ([`http`]) pops
//! batches and posts each as the multipart request of `docs/datadog-intake.md`
//! ([`event`] builds `event.json`, the tags and the parts). The queue holds
//! at most [`QUEUE_CAPACITY`] batches and drops the oldest when full, so a
//! slow or absent agent costs bounded memory and never blocks collection.

pub(crate) mod dir;
pub(crate) mod event;
pub(crate) mod http;
pub(crate) mod queue;

use std::time::SystemTime;

/// Batches waiting to be uploaded, at most.
pub(crate) const QUEUE_CAPACITY: usize = 5;

/// One period's profiles, ready to write and send.
#[derive(Clone, Debug)]
pub(crate) struct Batch {
    /// `profile_seq`: 0 for the first batch of the process, then +1.
    pub seq: u64,
    /// When the period began.
    pub start: SystemTime,
    /// When the period ended (the profiles were collected).
    pub end: SystemTime,
    /// File name (`cpu.pprof`, `delta-heap.pprof`, `metrics.json`) and
    /// bytes, in the order collected.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

impl Batch {
    /// Bytes of all the files.
    pub fn profile_bytes(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }
}
