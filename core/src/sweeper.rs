//! Idle deadlines, swept at a cost proportional to what is due.
//!
//! Streams record their last activity with a plain store; nothing is reordered on the data
//! path. The queue holds at most one entry per stream: the deadline computed when the entry was
//! pushed. A sweep pops only entries that are due. For each, the owner looks at the stream's
//! real last activity: a stream that stayed idle expires, one that moved since is pushed back
//! with its new deadline, and one that is already gone is dropped. So a sweep touches the
//! streams that expired plus, at most once per idle period, each active stream; never all of
//! them at every tick.
//!
//! Entries of closed streams are left in place and dropped when they come due. So that churn
//! cannot grow the queue without bound, the owner rebuilds it from its live streams once stale
//! entries outnumber live ones ([`DeadlineQueue::needs_rebuild`]); that work is paid for by the
//! closes that made it necessary.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::frame::StreamId;
use crate::time::Millis;

/// A min-queue of `(deadline, stream)` entries.
#[derive(Clone, Debug, Default)]
pub struct DeadlineQueue {
    heap: BinaryHeap<Reverse<(Millis, StreamId)>>,
}

impl DeadlineQueue {
    /// An empty queue.
    pub fn new() -> DeadlineQueue {
        DeadlineQueue::default()
    }

    /// Adds an entry.
    pub fn push(&mut self, deadline: Millis, stream: StreamId) {
        self.heap.push(Reverse((deadline, stream)));
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, StreamId)> {
        match self.heap.peek() {
            Some(Reverse((deadline, _))) if *deadline <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// The earliest deadline in the queue, which may belong to a stream that has since moved or
    /// closed: a sweep then simply finds nothing to expire.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// Entries held, live or stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Whether stale entries outnumber `live` streams enough to warrant [`DeadlineQueue::rebuild`].
    pub fn needs_rebuild(&self, live: usize) -> bool {
        self.heap.len() > 2 * live + 64
    }

    /// Replaces every entry with `entries`, keeping the allocation.
    pub fn rebuild(&mut self, entries: impl IntoIterator<Item = (Millis, StreamId)>) {
        let mut vec = std::mem::take(&mut self.heap).into_vec();
        vec.clear();
        vec.extend(entries.into_iter().map(Reverse));
        self.heap = BinaryHeap::from(vec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_what_is_due_in_deadline_order() {
        let mut q = DeadlineQueue::new();
        q.push(Millis(30), StreamId(1));
        q.push(Millis(10), StreamId(2));
        q.push(Millis(20), StreamId(3));
        assert_eq!(q.next_deadline(), Some(Millis(10)));
        assert_eq!(q.pop_due(Millis(9)), None);
        assert_eq!(q.pop_due(Millis(20)), Some((Millis(10), StreamId(2))));
        assert_eq!(q.pop_due(Millis(20)), Some((Millis(20), StreamId(3))));
        assert_eq!(q.pop_due(Millis(20)), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn rebuild_replaces_entries() {
        let mut q = DeadlineQueue::new();
        for i in 1..=200 {
            q.push(Millis(i), StreamId(i as u32));
        }
        assert!(q.needs_rebuild(10));
        assert!(!q.needs_rebuild(100));
        q.rebuild([(Millis(5), StreamId(7))]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_due(Millis(5)), Some((Millis(5), StreamId(7))));
        assert!(q.is_empty());
    }
}
