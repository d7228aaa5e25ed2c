//! roo-acme: certificates from an ACME CA (Let's Encrypt), obtained once for the whole cluster.
//!
//! Layout, one concept a module:
//! - [`store`]: the small storage trait the caller backs with its replicated KV, and the keys and
//!   records kept there (account, challenges, orders, per-host status, certificates).
//! - [`issuer`]: the [`Issuer`]: which hosts need a certificate now, and the order that gets one
//!   (account, challenges, finalize, store).
//! - [`challenge`]: what nodes answer the CA with: HTTP-01 tokens and TLS-ALPN-01 certificates.
//! - [`cert`]: what an issued certificate says (validity, renewal time, ARI identifier), and the
//!   stored form every node serves.
//! - [`schedule`]: when to try again after a failure: exponential back-off with jitter.
//! - [`http`]: the HTTP client that talks to the CA, with timeouts and the extra trusted root.
//! - [`roots`]: the roots roo's TLS clients trust (the system's plus an operator's PEM file).
//!
//! The crate knows nothing of raft: which node runs the issuer is the caller's decision (rood
//! runs it on the raft leader only), and every node learns challenges and certificates from the
//! store.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cert;
pub mod challenge;
mod error;
mod http;
pub mod issuer;
pub mod roots;
pub mod schedule;
pub mod store;

pub use cert::{CertInfo, StoredCert};
pub use error::AcmeError;
pub use issuer::{AcmeConfig, ChallengeKind, Issuer};
pub use store::{Notice, Store, StoreError};
