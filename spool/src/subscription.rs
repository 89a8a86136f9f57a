//! Catch-up-then-live subscriptions.
//!
//! A subscription is a position and a filter. It reads stored events from its position in
//! pages, and when it has caught up it waits on the head watch, which the writer moves only
//! after a group is durable. The same read serves both phases, so the switch to live has no gap
//! and no duplicate. The watch keeps only the newest head: a slow subscriber costs the writer
//! nothing and simply reads more per wake-up.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{Result, SpoolError};
use crate::reader::SpoolReader;
use crate::types::{Filter, RecordedEvent, Seq};

/// Events a subscription reads per page.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 256;

/// A stream of events passing a filter, from a position on, then live. See
/// [`crate::Spool::subscribe`].
///
/// It shares the spool's database handle: drop subscriptions before reopening the spool in
/// the same process, or the new open finds the file still open
/// ([`SpoolError::AlreadyOpen`]).
pub struct Subscription {
    reader: Arc<SpoolReader>,
    head: watch::Receiver<Seq>,
    filter: Filter,
    next: Seq,
    buffer: VecDeque<RecordedEvent>,
}

impl Subscription {
    pub(crate) fn new(
        reader: Arc<SpoolReader>,
        head: watch::Receiver<Seq>,
        filter: Filter,
        next: Seq,
    ) -> Subscription {
        Subscription {
            reader,
            head,
            filter,
            next,
            buffer: VecDeque::new(),
        }
    }

    /// The position of the next event this subscription will consider.
    pub fn position(&self) -> Seq {
        self.next
    }

    /// Read the next page if there is one. `Ok(true)` if events were buffered or more may be
    /// read without waiting.
    fn fill(&mut self) -> Result<bool> {
        // Mark the head seen before reading, so a commit after the read wakes us.
        let head = *self.head.borrow_and_update();
        // Past the head nothing is durable yet: a read would find nothing, and a live subscriber
        // would pay a read transaction for it after every event it takes.
        if self.next > head {
            return Ok(false);
        }
        let (events, next) =
            self.reader
                .read_filtered(self.next, &self.filter, SUBSCRIPTION_PAGE_EVENTS)?;
        self.next = next;
        let got = !events.is_empty();
        self.buffer.extend(events);
        Ok(got || next <= head)
    }

    /// The next event, waiting for one to become durable if caught up. Fails with
    /// [`SpoolError::Closed`] once the spool is closed and everything is read.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            if !self.fill()? && self.head.changed().await.is_err() {
                // Closed: drain what was committed before the close.
                if !self.fill()? && self.buffer.is_empty() {
                    return Err(SpoolError::Closed);
                }
            }
        }
    }

    /// The next event if one is already stored, without waiting.
    pub fn try_next(&mut self) -> Result<Option<RecordedEvent>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(Some(event));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }
}
