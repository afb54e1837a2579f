//! Handing clients between shards.
//!
//! A client is served by a session on the shard that accepted it whenever there is one, so its
//! bytes never cross shards. When the accepting shard has no session for the connector, the
//! client's socket itself moves to a shard that has one, and from then on all of that client's
//! frames stay there too: only the hand-off crosses.
//!
//! Hand-offs travel through bounded lock-free single-producer single-consumer rings, one per
//! ordered pair of shards. The receiving shard drains all its rings in one batch when woken, and
//! a sender wakes it only when the ring it pushed to was empty, so a burst of hand-offs costs
//! one wake-up. A full ring refuses the hand-off (the client is reset and counted as overload).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use nowconnect_core::name::ConnectorName;
use rtrb::{Consumer, Producer, RingBuffer};
use tokio::sync::Notify;

/// Hand-offs each ring holds before refusing more.
pub(crate) const RING_CAPACITY: usize = 1024;

/// A client on its way to another shard.
pub(crate) struct Handoff {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) listener: usize,
}

/// Shared by all shards: where sessions are, and how to wake a shard.
pub(crate) struct Mesh {
    /// For each connector, how many routable sessions each shard holds.
    presence: Mutex<HashMap<ConnectorName, Vec<u32>>>,
    wake: Vec<Notify>,
    shards: usize,
}

/// One shard's ends of the rings.
pub(crate) struct Ends {
    /// Indexed by destination shard; `None` for this shard.
    pub(crate) outbound: Vec<Option<Producer<Handoff>>>,
    /// Indexed by source shard; `None` for this shard.
    pub(crate) inbound: Vec<Option<Consumer<Handoff>>>,
}

impl Mesh {
    /// A mesh of `shards` shards and the ring ends of each.
    pub(crate) fn new(shards: usize) -> (Mesh, Vec<Ends>) {
        Mesh::with_capacity(shards, RING_CAPACITY)
    }

    /// [`Mesh::new`] with rings of `capacity` hand-offs.
    pub(crate) fn with_capacity(shards: usize, capacity: usize) -> (Mesh, Vec<Ends>) {
        let mut ends: Vec<Ends> = (0..shards)
            .map(|_| Ends {
                outbound: (0..shards).map(|_| None).collect(),
                inbound: (0..shards).map(|_| None).collect(),
            })
            .collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (producer, consumer) = RingBuffer::new(capacity);
                    ends[from].outbound[to] = Some(producer);
                    ends[to].inbound[from] = Some(consumer);
                }
            }
        }
        let mesh = Mesh {
            presence: Mutex::new(HashMap::new()),
            wake: (0..shards).map(|_| Notify::new()).collect(),
            shards,
        };
        (mesh, ends)
    }

    /// Records that `shard` gained (`+1`) or lost (`-1`) a routable session for `connector`.
    pub(crate) fn update(&self, connector: ConnectorName, shard: usize, delta: i32) {
        let mut presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let counts = presence
            .entry(connector)
            .or_insert_with(|| vec![0; self.shards]);
        if let Some(c) = counts.get_mut(shard) {
            *c = c.saturating_add_signed(delta);
        }
    }

    /// A shard other than `from` with a session for `connector`, preferring the one with the
    /// most sessions.
    pub(crate) fn shard_with(&self, connector: &ConnectorName, from: usize) -> Option<usize> {
        let presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let counts = presence.get(connector)?;
        counts
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != from && **n > 0)
            .max_by_key(|(_, n)| **n)
            .map(|(i, _)| i)
    }

    /// Wakes `shard` to drain its rings.
    pub(crate) fn wake(&self, shard: usize) {
        if let Some(n) = self.wake.get(shard) {
            n.notify_one();
        }
    }

    /// Waits until this shard is woken.
    pub(crate) async fn woken(&self, shard: usize) {
        if let Some(n) = self.wake.get(shard) {
            n.notified().await;
        }
    }
}

/// Pushes `handoff` to `to`; returns it back if the ring is full. Wakes the receiver only when
/// the ring was empty before the push.
pub(crate) fn send(
    mesh: &Mesh,
    producer: &mut Producer<Handoff>,
    to: usize,
    handoff: Handoff,
) -> Result<(), Handoff> {
    let was_empty = producer.slots() == producer.buffer().capacity();
    producer
        .push(handoff)
        .map_err(|rtrb::PushError::Full(h)| h)?;
    if was_empty {
        mesh.wake(to);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> Handoff {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        Handoff {
            stream,
            peer: "127.0.0.1:1".parse().unwrap(),
            listener: 0,
        }
    }

    #[test]
    fn presence_finds_another_shard_with_a_session() {
        let (mesh, _) = Mesh::new(3);
        let c = ConnectorName::from_str("ldap").unwrap();
        assert_eq!(mesh.shard_with(&c, 0), None);
        mesh.update(c, 0, 1);
        assert_eq!(mesh.shard_with(&c, 0), None, "never the asking shard");
        mesh.update(c, 2, 1);
        assert_eq!(mesh.shard_with(&c, 0), Some(2));
        mesh.update(c, 2, -1);
        assert_eq!(mesh.shard_with(&c, 0), None);
        mesh.update(c, 1, -1);
        assert_eq!(mesh.shard_with(&c, 0), None, "counts never go below zero");
    }

    #[test]
    fn rings_connect_every_ordered_pair_and_refuse_when_full() {
        let (mesh, mut ends) = Mesh::with_capacity(2, 8);
        assert!(ends[0].outbound[0].is_none() && ends[0].inbound[0].is_none());
        let mut producer = ends[0].outbound[1].take().unwrap();
        let mut consumer = ends[1].inbound[0].take().unwrap();
        let mut full = false;
        for _ in 0..=8 {
            if send(&mesh, &mut producer, 1, handoff()).is_err() {
                full = true;
            }
        }
        assert!(full, "a ring is bounded");
        let mut drained = 0;
        while consumer.pop().is_ok() {
            drained += 1;
        }
        assert_eq!(drained, 8);
    }
}
