//! Group commit: one thread makes sled durable for every writer waiting on it.
//!
//! Raft appends hand their completion callback here and return at once, so the leader replicates
//! while its own flush runs. The thread takes every request queued so far, runs one `flush` for
//! all of them (sled's one log covers every tree), then completes them in order.

use std::sync::mpsc;

use openraft::storage::LogFlushed;
use tokio::sync::oneshot;

use crate::TypeConfig;

enum Waiter {
    Append(LogFlushed<TypeConfig>),
    Sync(oneshot::Sender<Result<(), String>>),
}

/// Handle to the flusher thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Waiter>,
}

impl Flusher {
    pub fn start(db: sled::Db) -> std::io::Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        std::thread::Builder::new()
            .name("roo-kv-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "flushing the store");
                    }
                    for w in batch {
                        match w {
                            Waiter::Append(cb) => {
                                cb.log_io_completed(result.clone().map_err(std::io::Error::other))
                            }
                            Waiter::Sync(tx) => {
                                let _ = tx.send(result.clone());
                            }
                        }
                    }
                }
            })?;
        Ok(Flusher { tx })
    }

    /// Completes `callback` once everything written so far is durable.
    pub fn after_flush(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(Waiter::Append(cb))) = self.tx.send(Waiter::Append(callback)) {
            cb.log_io_completed(Err(std::io::Error::other("store flusher stopped")));
        }
    }

    /// Returns once everything written so far is durable.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Waiter::Sync(tx))
            .map_err(|_| "store flusher stopped".to_string())?;
        rx.await.map_err(|_| "store flusher stopped".to_string())?
    }
}
