//! Plain keep-alive connections idle for a while ([`PARK_AFTER`]), kept as bare sockets in an
//! epoll set of the worker's own, as nginx keeps every connection, rather than each as a task
//! with a registration in the runtime. A parked connection costs its descriptor and 8 bytes
//! here: what its task held is kept for all of them at once (the permits under the connection
//! limit merged into one, the counts left as they were) and its peer's address is asked of the
//! socket again when it wakes. The first bytes of its next request bring it back as a task.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::OwnedSemaphorePermit;

use super::Held;
use crate::report::Level;

/// How long a connection waits for its next request as a task before it is parked.
pub const PARK_AFTER: Duration = Duration::from_millis(500);
/// Events taken from the set at once.
const EVENTS: usize = 256;

/// One worker's parked connections (for one listener), by token.
pub struct ParkingLot {
    registry: Registry,
    /// The counts every [`Held`] of this listener keeps up: a parked connection still counts.
    open: Level,
    load: Arc<AtomicUsize>,
    /// What parking times are counted from.
    epoch: Instant,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    parked: Vec<Slot>,
    free: Vec<u32>,
    /// The slots under the connection limit of every parked connection, merged.
    permits: Option<OwnedSemaphorePermit>,
    /// No more parking (shutdown, or the set failed).
    closed: bool,
}

/// A parked connection, or a free place (no stream).
struct Slot {
    stream: Option<TcpStream>,
    /// When it was parked: milliseconds from the lot's epoch, wrapping (a connection is parked
    /// for at most [`super::Limits::idle_timeout`], a day, far less than a wrap's 49 days).
    since: u32,
}

/// The lot's epoll set, registered with the runtime: readable when a parked connection is.
pub struct Waiter {
    poll: AsyncFd<Poll>,
    events: Events,
}

impl ParkingLot {
    /// A lot whose connections are counted in `open` and `load`, as their tasks' [`Held`] are.
    pub fn new(open: Level, load: Arc<AtomicUsize>) -> std::io::Result<(Arc<ParkingLot>, Waiter)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let lot = ParkingLot {
            registry,
            open,
            load,
            epoch: Instant::now(),
            slots: Mutex::default(),
        };
        // Deprecated as unsound for a descriptor its owner could close while registered; here
        // the AsyncFd owns the Poll, whose epoll descriptor stays open until both are dropped
        // (the crate forbids the `unsafe` of its replacement).
        #[allow(deprecated)]
        let poll = AsyncFd::new(poll)?;
        let waiter = Waiter {
            poll,
            events: Events::with_capacity(EVENTS),
        };
        Ok((Arc::new(lot), waiter))
    }

    /// Parks a connection with nothing read of its next request, with what its task held
    /// (one over the connection limit is not parked: it was to close anyway).
    pub fn park(&self, stream: tokio::net::TcpStream, mut held: Held) -> std::io::Result<()> {
        let Some(permit) = held.slot.take() else {
            return Err(std::io::Error::other("over the connection limit"));
        };
        let stream = stream.into_std()?;
        let fd = stream.as_raw_fd();
        let since = self.now();
        let mut slots = self.lock();
        if slots.closed {
            return Err(std::io::Error::other("the parking lot is closed"));
        }
        let token = match slots.free.pop() {
            Some(token) => token as usize,
            None if slots.parked.len() < u32::MAX as usize => {
                slots.parked.push(Slot {
                    stream: None,
                    since,
                });
                slots.parked.len() - 1
            }
            None => return Err(std::io::Error::other("the parking lot is full")),
        };
        // Registered while the lock is held: the connection cannot be woken before it is in.
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            slots.free.push(token as u32);
            return Err(e);
        }
        slots.parked[token] = Slot {
            stream: Some(stream),
            since,
        };
        // One listener's lot: every permit is of that listener's semaphore, as merging needs.
        match &mut slots.permits {
            Some(all) => all.merge(permit),
            none => *none = Some(permit),
        }
        // The lot counts the connection from here; the task's hold, dropped, counts it no more.
        self.open.inc();
        self.load.fetch_add(1, Ordering::Relaxed);
        drop(slots);
        drop(held);
        Ok(())
    }

    /// Takes a connection out of the lot, with a hold like the one it was parked with.
    fn take(&self, token: usize) -> Option<(TcpStream, Held)> {
        let mut slots = self.lock();
        let stream = slots.parked.get_mut(token)?.stream.take()?;
        slots.free.push(token as u32);
        let _ = self.registry.deregister(&mut SourceFd(&stream.as_raw_fd()));
        let slot = slots.permits.as_mut().and_then(|all| all.split(1));
        // Its count goes over to the hold, which takes it down when dropped.
        let held = Held {
            slot,
            open: self.open.clone(),
            load: self.load.clone(),
        };
        Some((stream, held))
    }

    /// Closes the connections parked for longer than `idle`.
    pub fn expire(&self, idle: Duration) {
        let now = self.now();
        let idle = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX / 2);
        let expired: Vec<usize> = self
            .lock()
            .parked
            .iter()
            .enumerate()
            .filter(|(_, p)| p.stream.is_some() && now.wrapping_sub(p.since) >= idle)
            .map(|(token, _)| token)
            .collect();
        for token in expired {
            drop(self.take(token));
        }
    }

    /// Closes every parked connection, and parks no more.
    pub fn close(&self) {
        let all = {
            let mut slots = self.lock();
            slots.closed = true;
            slots.parked.len()
        };
        for token in 0..all {
            drop(self.take(token));
        }
    }

    /// Connections parked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let slots = self.lock();
        slots.parked.len() - slots.free.len()
    }

    /// Now, in milliseconds from the epoch, wrapping.
    fn now(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Waiter {
    /// The parked connections that have something to read (a request, or their end), out of
    /// `lot`, each with its hold.
    pub async fn woken(&mut self, lot: &ParkingLot) -> std::io::Result<Vec<(TcpStream, Held)>> {
        loop {
            let mut ready = self.poll.readable_mut().await?;
            match ready
                .get_inner_mut()
                .poll(&mut self.events, Some(Duration::ZERO))
            {
                Ok(()) => {}
                // A signal (the CPU profiler's, say) during the call: ask again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let taken = self.events.iter().count();
            // The set's readiness is an edge: it is cleared only once the set is drained.
            if taken < EVENTS {
                ready.clear_ready();
            }
            let woken: Vec<(TcpStream, Held)> = self
                .events
                .iter()
                .filter_map(|event| lot.take(event.token().0))
                .collect();
            if !woken.is_empty() {
                return Ok(woken);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::Semaphore;

    /// A connection's hold as its listener gives it: a slot of `limit`, counted in `load`.
    fn held(limit: &Arc<Semaphore>, open: &Level, load: &Arc<AtomicUsize>) -> Held {
        load.fetch_add(1, Ordering::SeqCst);
        open.inc();
        Held {
            slot: Some(limit.clone().try_acquire_owned().unwrap()),
            open: open.clone(),
            load: load.clone(),
        }
    }

    /// A connected pair: (client side, server side as the proxy accepted it).
    async fn pair(
        listener: &tokio::net::TcpListener,
    ) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn parked_connections_wake_on_bytes_or_their_end_and_go_when_expired() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (open, load) = (Level::default(), Arc::new(AtomicUsize::new(0)));
        let limit = Arc::new(Semaphore::new(10));
        let (lot, mut waiter) = ParkingLot::new(open.clone(), load.clone()).unwrap();
        let (mut a, a_server) = pair(&listener).await;
        let a_addr = a.local_addr().unwrap();
        let (b, b_server) = pair(&listener).await;
        let (_c, c_server) = pair(&listener).await;
        for server in [a_server, b_server, c_server] {
            lot.park(server, held(&limit, &open, &load)).unwrap();
        }
        assert_eq!(lot.len(), 3);
        assert_eq!((open.get(), load.load(Ordering::SeqCst)), (3, 3));
        assert_eq!(
            limit.available_permits(),
            7,
            "parked connections keep their slots"
        );

        // A request's first bytes wake its connection, with a hold like the one it had.
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter.woken(&lot))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(woken.len(), 1);
        let (stream, a_held) = woken.into_iter().next().unwrap();
        assert_eq!(stream.peer_addr().unwrap(), a_addr);
        assert!(a_held.slot.as_ref().is_some_and(|s| s.num_permits() == 1));
        let mut back = tokio::net::TcpStream::from_std(stream).unwrap();
        let mut line = [0u8; 16];
        tokio::io::AsyncReadExt::read_exact(&mut back, &mut line)
            .await
            .unwrap();
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");
        assert_eq!(lot.len(), 2);
        assert_eq!(
            (open.get(), load.load(Ordering::SeqCst)),
            (3, 3),
            "a woken connection still counts"
        );

        // A client that goes away wakes its connection too (to be closed by its task).
        drop(b);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter.woken(&lot))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(woken.len(), 1);
        drop(woken);
        assert_eq!((open.get(), load.load(Ordering::SeqCst)), (2, 2));
        assert_eq!(limit.available_permits(), 8);

        // Past the idle limit, parked connections are closed and their holds let go.
        lot.expire(Duration::from_secs(60));
        assert_eq!(lot.len(), 1);
        lot.expire(Duration::ZERO);
        assert_eq!(lot.len(), 0);
        assert_eq!(load.load(Ordering::SeqCst), 1, "only the woken one left");
        assert_eq!(limit.available_permits(), 9);
        drop(a_held);
        assert_eq!((open.get(), load.load(Ordering::SeqCst)), (0, 0));
        assert_eq!(limit.available_permits(), 10);

        // A connection over the limit is not parked; a closed lot parks nothing.
        let (_d, d_server) = pair(&listener).await;
        let mut over = held(&limit, &open, &load);
        drop(over.slot.take());
        assert!(lot.park(d_server, over).is_err());
        let (_e, e_server) = pair(&listener).await;
        lot.close();
        assert!(lot.park(e_server, held(&limit, &open, &load)).is_err());
        assert_eq!((open.get(), load.load(Ordering::SeqCst)), (0, 0));
        assert_eq!(limit.available_permits(), 10);
    }
}
