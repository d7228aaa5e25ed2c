//! Plain keep-alive connections idle for a while ([`PARK_AFTER`]), kept as bare sockets in an
//! epoll set of the worker's own, as nginx keeps every connection, rather than each as a task
//! with a registration in the runtime: a parked connection costs about 150 bytes instead of 1.6
//! KB. The first bytes of its next request bring it back as a task.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;

use super::{ConnInfo, Held};

/// How long a connection waits for its next request as a task before it is parked.
pub const PARK_AFTER: Duration = Duration::from_millis(500);
/// Events taken from the set at once.
const EVENTS: usize = 256;

/// A connection waiting in the lot, with what its task held.
pub struct Parked {
    pub stream: TcpStream,
    pub info: ConnInfo,
    pub held: Held,
    since: Instant,
}

/// One worker's parked connections (for one listener), by token.
pub struct ParkingLot {
    registry: Registry,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// Boxed: a free slot (and the room the Vec keeps ahead) costs a pointer, not a connection.
    parked: Vec<Option<Box<Parked>>>,
    free: Vec<usize>,
    /// No more parking (shutdown, or the set failed).
    closed: bool,
}

/// The lot's epoll set, registered with the runtime: readable when a parked connection is.
pub struct Waiter {
    poll: AsyncFd<Poll>,
    events: Events,
}

impl ParkingLot {
    pub fn new() -> std::io::Result<(Arc<ParkingLot>, Waiter)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let lot = ParkingLot {
            registry,
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

    /// Parks a connection with nothing read of its next request.
    pub fn park(
        &self,
        stream: tokio::net::TcpStream,
        info: ConnInfo,
        held: Held,
    ) -> std::io::Result<()> {
        let stream = stream.into_std()?;
        let fd = stream.as_raw_fd();
        let mut slots = self.lock();
        if slots.closed {
            return Err(std::io::Error::other("the parking lot is closed"));
        }
        let token = match slots.free.pop() {
            Some(token) => token,
            None => {
                slots.parked.push(None);
                slots.parked.len() - 1
            }
        };
        // Registered while the lock is held: the connection cannot be woken before it is in.
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            slots.free.push(token);
            return Err(e);
        }
        slots.parked[token] = Some(Box::new(Parked {
            stream,
            info,
            held,
            since: Instant::now(),
        }));
        Ok(())
    }

    /// Takes a connection out of the lot.
    fn take(&self, token: usize) -> Option<Box<Parked>> {
        let mut slots = self.lock();
        let parked = slots.parked.get_mut(token)?.take()?;
        slots.free.push(token);
        let _ = self
            .registry
            .deregister(&mut SourceFd(&parked.stream.as_raw_fd()));
        Some(parked)
    }

    /// Closes the connections parked for longer than `idle`.
    pub fn expire(&self, idle: Duration) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .lock()
            .parked
            .iter()
            .enumerate()
            .filter(|(_, p)| p.as_ref().is_some_and(|p| now - p.since > idle))
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Waiter {
    /// The parked connections that have something to read (a request, or their end), out of
    /// `lot`.
    pub async fn woken(&mut self, lot: &ParkingLot) -> std::io::Result<Vec<Box<Parked>>> {
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
            let woken: Vec<Box<Parked>> = self
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    fn held(load: &Arc<AtomicUsize>) -> Held {
        load.fetch_add(1, Ordering::SeqCst);
        Held {
            slot: None,
            open: Default::default(),
            load: load.clone(),
        }
    }

    /// A connected pair: (client side, server side as the proxy accepted it).
    async fn pair(
        listener: &tokio::net::TcpListener,
    ) -> (tokio::net::TcpStream, tokio::net::TcpStream, ConnInfo) {
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let info = ConnInfo {
            peer,
            client_ip: crate::proxy::headers::IpText::new(peer.ip()),
            scheme: crate::routes::Scheme::Http,
            over_limit: false,
        };
        (client, server, info)
    }

    #[tokio::test]
    async fn parked_connections_wake_on_bytes_or_their_end_and_go_when_expired() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (lot, mut waiter) = ParkingLot::new().unwrap();
        let load = Arc::new(AtomicUsize::new(0));
        let (mut a, a_server, info) = pair(&listener).await;
        let (b, b_server, _) = pair(&listener).await;
        let (_c, c_server, _) = pair(&listener).await;
        for server in [a_server, b_server, c_server] {
            lot.park(server, info, held(&load)).unwrap();
        }
        assert_eq!(lot.len(), 3);

        // A request's first bytes wake its connection, with what it held.
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter.woken(&lot))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(woken.len(), 1);
        assert_eq!(woken[0].info.peer, info.peer);
        let parked = woken.into_iter().next().unwrap();
        let mut back = tokio::net::TcpStream::from_std(parked.stream).unwrap();
        let mut line = [0u8; 16];
        tokio::io::AsyncReadExt::read_exact(&mut back, &mut line)
            .await
            .unwrap();
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");
        assert_eq!(lot.len(), 2);
        assert_eq!(
            load.load(Ordering::SeqCst),
            3,
            "a woken connection keeps its hold"
        );

        // A client that goes away wakes its connection too (to be closed by its task).
        drop(b);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter.woken(&lot))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(woken.len(), 1);
        drop(woken);
        assert_eq!(load.load(Ordering::SeqCst), 2);

        // Past the idle limit, parked connections are closed and their holds let go.
        lot.expire(Duration::from_secs(60));
        assert_eq!(lot.len(), 1);
        lot.expire(Duration::ZERO);
        assert_eq!(lot.len(), 0);
        assert_eq!(load.load(Ordering::SeqCst), 1, "only the woken one left");
        drop(parked.held);
        assert_eq!(load.load(Ordering::SeqCst), 0);
    }
}
