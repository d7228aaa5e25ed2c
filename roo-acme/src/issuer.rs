//! The issuer: which hosts need a certificate now, and the order that gets one.
//!
//! [`Issuer::reconcile`] is called by whoever runs the issuer for the cluster (rood: the raft
//! leader), with the hosts that should have a certificate. For each host without one, with one
//! due for renewal (two thirds into its lifetime, or earlier when the CA's renewal information
//! says so), and not in back-off after a failure, it starts an order in its own task:
//!
//! 1. the cluster's account, created once and kept in the store;
//! 2. the order kept in the store (`com.roo.acme.order:<host>`) if a previous leader started one,
//!    else a new one, recorded before anything else is done with it;
//! 3. each pending authorization: the challenge response is written to the store (so that every
//!    node can answer it), then the CA is told to validate;
//! 4. a new key and CSR (the key is stored with the order first, so a new leader can collect the
//!    certificate), finalize, poll, and the chain and key written to `com.roo.cert:<host>`.
//!
//! A failure is recorded in `com.roo.acme.status:<host>` with the next attempt after an
//! exponential, jittered back-off (or the CA's `Retry-After` when it rate-limits). At most one
//! order per host runs at a time, and at most [`AcmeConfig::max_concurrent`] in all.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cert::{rfc3339, unix, CertInfo, StoredCert};
use crate::challenge::tls_alpn01_cert;
use crate::http::{CaClient, RETRY_AFTER};
use crate::schedule::backoff;
use crate::store::{
    cert_key, get_json, http01_key, order_key, status_key, tlsalpn01_key, to_json, AccountRecord,
    HostStatus, Notice, OrderRecord, Store, ACCOUNT_KEY,
};
use crate::AcmeError;

/// Which challenge the issuer answers when the CA offers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
}

impl ChallengeKind {
    fn acme(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn other(self) -> ChallengeKind {
        match self {
            ChallengeKind::Http01 => ChallengeKind::TlsAlpn01,
            ChallengeKind::TlsAlpn01 => ChallengeKind::Http01,
        }
    }
}

/// How the issuer talks to the CA.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// Account contact, without `mailto:`.
    pub email: Option<String>,
    /// An extra root (PEM) to trust for the CA's own TLS certificate.
    pub ca_file: Option<PathBuf>,
    pub challenge: ChallengeKind,
    /// Wait after the first failure for a host; doubles with each further one up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Longest an order may take, validation included.
    pub order_timeout: Duration,
    /// Longest one request to the CA may take.
    pub request_timeout: Duration,
    /// Orders running at once.
    pub max_concurrent: usize,
}

impl AcmeConfig {
    pub fn new(directory: impl Into<String>) -> AcmeConfig {
        AcmeConfig {
            directory: directory.into(),
            email: None,
            ca_file: None,
            challenge: ChallengeKind::Http01,
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(24 * 3600),
            order_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(15),
            max_concurrent: 4,
        }
    }
}

/// Let's Encrypt's production and staging directories.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How long an order kept in the store may be resumed.
const ORDER_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// When the CA gives no `Retry-After` with a rate-limit answer.
const RATE_LIMIT_DEFAULT: Duration = Duration::from_secs(3600);

/// The cluster's certificate issuer. Cheap to clone.
pub struct Issuer<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Issuer<S> {
    fn clone(&self) -> Self {
        Issuer {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    store: S,
    config: AcmeConfig,
    http: Arc<CaClient>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// Hosts with an order or a renewal check under way on this node.
    busy: Mutex<HashSet<String>>,
    /// Hosts refused as invalid, logged once.
    refused: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
    orders: AtomicU64,
    failures: AtomicU64,
    issued: AtomicU64,
}

/// What the issuer did on this node since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Orders placed (resumed ones not counted again).
    pub orders: u64,
    pub failures: u64,
    pub issued: u64,
}

/// When a host needs something.
enum Due {
    Now(Work),
    At(SystemTime),
}

/// What a host needs.
enum Work {
    Order,
    /// Ask the CA's renewal information when to renew.
    RenewalInfo(instant_acme::CertificateIdentifier<'static>),
}

/// Marks a host busy for as long as it lives.
struct BusyGuard<S: Store> {
    issuer: Issuer<S>,
    host: String,
}

impl<S: Store> Drop for BusyGuard<S> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.issuer.inner.busy.lock() {
            busy.remove(&self.host);
        }
    }
}

impl<S: Store> Issuer<S> {
    /// Checks the settings (the CA root file is read here) and builds the issuer.
    pub fn new(store: S, config: AcmeConfig) -> Result<Issuer<S>, AcmeError> {
        if !config.directory.starts_with("https://") {
            return Err(AcmeError::Config(format!(
                "ACME directory {:?} is not an https URL",
                config.directory
            )));
        }
        let http = Arc::new(CaClient::new(
            config.ca_file.as_deref(),
            config.request_timeout,
        )?);
        Ok(Issuer {
            inner: Arc::new(Inner {
                store,
                permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
                config,
                http,
                account: tokio::sync::Mutex::new(None),
                busy: Mutex::new(HashSet::new()),
                refused: Mutex::new(HashSet::new()),
                orders: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                issued: AtomicU64::new(0),
            }),
        })
    }

    /// What the issuer did on this node.
    pub fn stats(&self) -> Stats {
        Stats {
            orders: self.inner.orders.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            issued: self.inner.issued.load(Ordering::Relaxed),
        }
    }

    /// Starts the work each of `hosts` needs now, each in its own task, and returns when the
    /// next host falls due (None: nothing scheduled). That work stops when `cancel` fires (this
    /// node stopped running the issuer); what it stored lets the next issuer resume it.
    pub async fn reconcile(
        &self,
        hosts: &BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> Option<SystemTime> {
        let mut next = None;
        for host in hosts {
            if let Err(reason) = check_host(host) {
                let first = self
                    .inner
                    .refused
                    .lock()
                    .map(|mut r| r.insert(host.clone()))
                    .unwrap_or(false);
                if first {
                    tracing::warn!(%host, reason, "not asking the CA for a certificate: invalid host name");
                }
                continue;
            }
            if self.is_busy(host) {
                continue;
            }
            match self.due(host).await {
                Ok(Due::Now(work)) => self.spawn(host.clone(), work, cancel.clone()),
                Ok(Due::At(at)) => next = Some(next.map_or(at, |n: SystemTime| n.min(at))),
                Err(e) => tracing::warn!(%host, error = %e, "checking certificate"),
            }
        }
        next
    }

    fn is_busy(&self, host: &str) -> bool {
        self.inner
            .busy
            .lock()
            .map(|b| b.contains(host))
            .unwrap_or(true)
    }

    /// What `host` needs now, or when it will.
    async fn due(&self, host: &str) -> Result<Due, AcmeError> {
        let store = &self.inner.store;
        let now = SystemTime::now();
        let status: HostStatus = get_json(store, &status_key(host))
            .await?
            .unwrap_or_default();
        if status.next_attempt > unix(now) {
            return Ok(Due::At(from_unix(status.next_attempt)));
        }
        let stored: Option<StoredCert> = match get_json(store, &cert_key(host)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%host, error = %e, "stored certificate unreadable; ordering a new one");
                None
            }
        };
        let Some(stored) = stored else {
            return Ok(Due::Now(Work::Order));
        };
        let info = match CertInfo::from_pem(&stored.cert_pem) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(%host, error = %e, "stored certificate unreadable; ordering a new one");
                return Ok(Due::Now(Work::Order));
            }
        };
        if !stored.is_acme() {
            // A manual certificate is the operator's: replaced only once it has expired.
            return Ok(if info.expired(now) {
                Due::Now(Work::Order)
            } else {
                Due::At(info.not_after)
            });
        }
        let mut renew_at = info.renew_at();
        if let Some(ari) = status.ari_renew_at {
            renew_at = renew_at.min(from_unix(ari));
        }
        if now >= renew_at {
            return Ok(Due::Now(Work::Order));
        }
        match (info.ari_id, status.ari_next_check) {
            (Some(id), None) => Ok(Due::Now(Work::RenewalInfo(id))),
            (Some(id), Some(t)) if t <= unix(now) => Ok(Due::Now(Work::RenewalInfo(id))),
            (Some(_), Some(t)) => Ok(Due::At(renew_at.min(from_unix(t)))),
            (None, _) => Ok(Due::At(renew_at)),
        }
    }

    fn spawn(&self, host: String, work: Work, cancel: CancellationToken) {
        match self.inner.busy.lock() {
            Ok(mut busy) => {
                if !busy.insert(host.clone()) {
                    return;
                }
            }
            Err(_) => return,
        }
        let guard = BusyGuard {
            issuer: self.clone(),
            host,
        };
        tokio::spawn(async move {
            let issuer = guard.issuer.clone();
            let host = guard.host.as_str();
            let permit = tokio::select! {
                p = issuer.inner.permits.clone().acquire_owned() => p,
                _ = cancel.cancelled() => return,
            };
            let note = Arc::new(Mutex::new(None));
            let timeout = issuer.inner.config.order_timeout;
            let run = async {
                match work {
                    Work::Order => issuer.issue(host).await,
                    Work::RenewalInfo(id) => issuer.renewal_info(host, id).await,
                }
            };
            let outcome = tokio::select! {
                r = RETRY_AFTER.scope(note.clone(), tokio::time::timeout(timeout, run)) => r,
                _ = cancel.cancelled() => {
                    tracing::info!(%host, "no longer the issuer; the next one resumes this order");
                    return;
                }
            };
            drop(permit);
            let error = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(_) => AcmeError::Timeout("order"),
            };
            let retry_after = note.lock().ok().and_then(|n| *n);
            issuer.failed(host, error, retry_after).await;
        });
    }

    /// Records a failed attempt and when to try again.
    async fn failed(&self, host: &str, error: AcmeError, retry_after: Option<SystemTime>) {
        let store = &self.inner.store;
        let now = SystemTime::now();
        let mut status: HostStatus = get_json(store, &status_key(host))
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        status.failures = status.failures.saturating_add(1);
        let mut next = now
            + backoff(
                status.failures,
                self.inner.config.retry_base,
                self.inner.config.retry_max,
            );
        if is_rate_limit(&error) {
            next = next.max(retry_after.unwrap_or(now + RATE_LIMIT_DEFAULT));
        }
        status.last_error = Some(error.to_string());
        status.last_attempt = unix(now);
        status.next_attempt = unix(next);
        tracing::warn!(
            %host,
            error = %error,
            failures = status.failures,
            retry_in_s = next.duration_since(now).map_or(0, |d| d.as_secs()),
            "certificate order failed"
        );
        if let Err(e) = self.put_json(&status_key(host), &status).await {
            tracing::warn!(%host, error = %e, "recording the failure");
        }
        let notice = Notice::Failed {
            host: host.to_string(),
            error: error.to_string(),
            failures: status.failures,
            next_attempt: status.next_attempt,
        };
        self.inner.store.tell(notice).await;
    }

    async fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), AcmeError> {
        Ok(self.inner.store.put(key, to_json(value)?).await?)
    }

    /// The cluster's account: the stored one, or a new one stored for every later issuer.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.inner.account.lock().await;
        if let Some(account) = &*slot {
            return Ok(account.clone());
        }
        let config = &self.inner.config;
        let builder =
            || Account::builder_with_http(Box::new(SharedClient(self.inner.http.clone())));
        let stored: Option<AccountRecord> = get_json(&self.inner.store, ACCOUNT_KEY).await?;
        let account = match stored {
            Some(record) if record.directory == config.directory => {
                builder().from_credentials(record.credentials).await?
            }
            stored => {
                let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        config.directory.clone(),
                        None,
                    )
                    .await?;
                let record = to_json(&AccountRecord {
                    directory: config.directory.clone(),
                    credentials,
                })?;
                if stored.is_some() {
                    // The directory changed (staging to production, say): a new account.
                    self.inner.store.put(ACCOUNT_KEY, record).await?;
                    account
                } else if !self.inner.store.create(ACCOUNT_KEY, record).await? {
                    // Another issuer stored one first: use that one.
                    let record: AccountRecord = get_json(&self.inner.store, ACCOUNT_KEY)
                        .await?
                        .ok_or_else(|| AcmeError::Config("account vanished".into()))?;
                    builder().from_credentials(record.credentials).await?
                } else {
                    tracing::info!(id = account.id(), directory = %config.directory, "ACME account created");
                    account
                }
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Gets a certificate for `host` and stores it.
    async fn issue(&self, host: &str) -> Result<(), AcmeError> {
        let started = Instant::now();
        let account = self.account().await?;
        let (mut order, mut record) = self.open_order(&account, host).await?;
        let mut challenge_keys = Vec::new();
        let result = self
            .complete(host, &mut order, &mut record, &mut challenge_keys)
            .await;
        for key in challenge_keys {
            if let Err(e) = self.inner.store.delete(&key).await {
                tracing::debug!(%key, error = %e, "removing a challenge");
            }
        }
        let order_removed = self.inner.store.delete(&order_key(host)).await;
        let stored = result?;
        order_removed?;
        let info = CertInfo::from_pem(&stored.cert_pem)?;
        let renewal = self.inner.store.get(&cert_key(host)).await?.is_some();
        self.put_json(&cert_key(host), &stored).await?;
        let now = unix(SystemTime::now());
        let status = HostStatus {
            last_attempt: now,
            last_success: Some(now),
            ..HostStatus::default()
        };
        self.put_json(&status_key(host), &status).await?;
        self.inner.issued.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            %host,
            issuer = %info.issuer,
            not_after = %rfc3339(info.not_after),
            ms = started.elapsed().as_millis() as u64,
            "certificate issued"
        );
        let notice = Notice::Issued {
            host: host.to_string(),
            renewal,
            issuer: info.issuer.clone(),
            not_after: rfc3339(info.not_after),
        };
        self.inner.store.tell(notice).await;
        Ok(())
    }

    /// The order a previous issuer left for `host`, if it can still be used, else a new one.
    async fn open_order(
        &self,
        account: &Account,
        host: &str,
    ) -> Result<(Order, OrderRecord), AcmeError> {
        let key = order_key(host);
        let now = SystemTime::now();
        if let Some(record) = get_json::<_, OrderRecord>(&self.inner.store, &key).await? {
            let age = now
                .duration_since(UNIX_EPOCH + Duration::from_secs(record.created))
                .unwrap_or_default();
            if age < ORDER_MAX_AGE {
                match account.order(record.url.clone()).await {
                    Ok(mut order) => {
                        if order.state().status != OrderStatus::Invalid {
                            tracing::info!(%host, url = %record.url, "resuming the order in progress");
                            return Ok((order, record));
                        }
                        tracing::info!(%host, "the stored order is invalid; placing a new one")
                    }
                    Err(e) => {
                        tracing::info!(%host, error = %e, "the stored order is gone; placing a new one")
                    }
                }
            }
        }
        let order = account
            .new_order(&NewOrder::new(&[Identifier::Dns(host.to_string())]))
            .await?;
        let record = OrderRecord {
            url: order.url().to_string(),
            created: unix(now),
            key_pem: None,
        };
        self.inner.orders.fetch_add(1, Ordering::Relaxed);
        self.put_json(&key, &record).await?;
        tracing::info!(%host, url = %record.url, "order placed");
        let notice = Notice::Ordered {
            host: host.to_string(),
            url: record.url.clone(),
        };
        self.inner.store.tell(notice).await;
        Ok((order, record))
    }

    /// Drives `order` to a certificate.
    async fn complete(
        &self,
        host: &str,
        order: &mut Order,
        record: &mut OrderRecord,
        challenge_keys: &mut Vec<String>,
    ) -> Result<StoredCert, AcmeError> {
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(self.inner.config.order_timeout);
        loop {
            match order.state().status {
                OrderStatus::Pending => {
                    self.authorize(host, order, challenge_keys).await?;
                    if order.poll_ready(&retries).await? == OrderStatus::Invalid {
                        return Err(AcmeError::Challenge {
                            host: host.to_string(),
                            detail: why_invalid(order).await,
                        });
                    }
                }
                OrderStatus::Ready => {
                    let rcgen_err = |e: rcgen::Error| AcmeError::Certificate(e.to_string());
                    let key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
                    let mut params =
                        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(rcgen_err)?;
                    params.distinguished_name = rcgen::DistinguishedName::new();
                    let csr = params.serialize_request(&key).map_err(rcgen_err)?;
                    record.key_pem = Some(key.serialize_pem());
                    self.put_json(&order_key(host), &*record).await?;
                    order.finalize_csr(csr.der()).await?;
                }
                OrderStatus::Processing | OrderStatus::Valid => {
                    let key_pem = record.key_pem.clone().ok_or_else(|| {
                        AcmeError::Certificate(
                            "the order was finalized without a stored key; starting over".into(),
                        )
                    })?;
                    let cert_pem = order.poll_certificate(&retries).await?;
                    let info = CertInfo::from_pem(&cert_pem)?;
                    return Ok(StoredCert {
                        cert_pem,
                        key_pem,
                        not_after: Some(rfc3339(info.not_after).into()),
                        source: Some("acme".into()),
                    });
                }
                OrderStatus::Invalid => {
                    return Err(AcmeError::Challenge {
                        host: host.to_string(),
                        detail: why_invalid(order).await,
                    })
                }
            }
        }
    }

    /// Puts the response to each pending authorization's challenge in the store, then asks the
    /// CA to validate it.
    async fn authorize(
        &self,
        host: &str,
        order: &mut Order,
        challenge_keys: &mut Vec<String>,
    ) -> Result<(), AcmeError> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Challenge {
                        host: host.to_string(),
                        detail: format!("authorization is {other:?}"),
                    })
                }
            }
            let preferred = self.inner.config.challenge;
            let kind = if authz
                .challenges
                .iter()
                .any(|c| c.r#type == preferred.acme())
            {
                preferred
            } else {
                preferred.other()
            };
            let mut challenge =
                authz
                    .challenge(kind.acme())
                    .ok_or_else(|| AcmeError::Challenge {
                        host: host.to_string(),
                        detail: "the CA offers neither http-01 nor tls-alpn-01".into(),
                    })?;
            let key_authorization = challenge.key_authorization();
            let key = match kind {
                ChallengeKind::Http01 => {
                    let key = http01_key(&challenge.token);
                    self.inner
                        .store
                        .put(&key, key_authorization.as_str().as_bytes().to_vec())
                        .await?;
                    key
                }
                ChallengeKind::TlsAlpn01 => {
                    let key = tlsalpn01_key(host);
                    let cert = tls_alpn01_cert(host, key_authorization.digest().as_ref())?;
                    self.put_json(&key, &cert).await?;
                    key
                }
            };
            challenge_keys.push(key);
            challenge.set_ready().await?;
            tracing::debug!(%host, ?kind, "challenge ready");
        }
        Ok(())
    }

    /// Asks the CA's renewal information (ARI) when to renew `host`'s certificate, and keeps the
    /// answer in its status. Not a failure when the CA has none.
    async fn renewal_info(
        &self,
        host: &str,
        id: instant_acme::CertificateIdentifier<'static>,
    ) -> Result<(), AcmeError> {
        let account = self.account().await?;
        let key = status_key(host);
        let mut status: HostStatus = get_json(&self.inner.store, &key).await?.unwrap_or_default();
        let now = SystemTime::now();
        match account.renewal_info(&id).await {
            Ok((info, retry)) => {
                let window = &info.suggested_window;
                let (start, end) = (window.start.unix_timestamp(), window.end.unix_timestamp());
                let at = if end > start {
                    rand::thread_rng().gen_range(start..end)
                } else {
                    start
                };
                status.ari_renew_at = Some(at.max(0) as u64);
                let retry = retry.clamp(Duration::from_secs(60), Duration::from_secs(24 * 3600));
                status.ari_next_check = Some(unix(now + retry));
                tracing::debug!(%host, renew_at = at, "renewal information");
            }
            Err(e) => {
                tracing::debug!(%host, error = %e, "no renewal information");
                status.ari_next_check = Some(unix(now + Duration::from_secs(6 * 3600)));
            }
        }
        self.put_json(&key, &status).await
    }
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// What the CA says made an order invalid.
async fn why_invalid(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    if let Some(problem) = &order.state().error {
        reasons.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(problem) = &c.error {
                    reasons.push(problem.to_string());
                }
            }
        }
    }
    if reasons.is_empty() {
        "the order became invalid".into()
    } else {
        reasons.join("; ")
    }
}

fn is_rate_limit(error: &AcmeError) -> bool {
    match error {
        AcmeError::Acme(instant_acme::Error::Api(problem)) => problem
            .r#type
            .as_deref()
            .is_some_and(|t| t.ends_with(":rateLimited")),
        _ => false,
    }
}

/// Whether a CA could issue for `host` by HTTP-01 or TLS-ALPN-01: a DNS name of two labels or
/// more, letters, digits and inner hyphens, not an IP address, not a wildcard.
pub fn check_host(host: &str) -> Result<(), &'static str> {
    if host.starts_with("*.") {
        return Err("wildcard names need a DNS-01 challenge: put a manual certificate in com.roo.cert:<host>");
    }
    if host.len() > 253 {
        return Err("longer than 253 characters");
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address");
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err("a single label");
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("a label is empty, too long, or has characters other than letters, digits and inner hyphens");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("an all-numeric top-level label");
    }
    Ok(())
}

/// Lets every account built here share one connection pool.
struct SharedClient(Arc<CaClient>);

impl instant_acme::HttpClient for SharedClient {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        instant_acme::HttpClient::request(&*self.0, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The store as a map: what `due` and `failed` decide depends only on what it holds.
    #[derive(Clone, Default)]
    struct MemStore(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

    impl Store for MemStore {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, crate::StoreError> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), crate::StoreError> {
            self.0.lock().unwrap().insert(key.to_string(), value);
            Ok(())
        }
        async fn create(&self, key: &str, value: Vec<u8>) -> Result<bool, crate::StoreError> {
            let mut map = self.0.lock().unwrap();
            if map.contains_key(key) {
                return Ok(false);
            }
            map.insert(key.to_string(), value);
            Ok(true)
        }
        async fn delete(&self, key: &str) -> Result<(), crate::StoreError> {
            self.0.lock().unwrap().remove(key);
            Ok(())
        }
    }

    fn issuer(store: &MemStore) -> Issuer<MemStore> {
        let mut config = AcmeConfig::new("https://ca.invalid/dir");
        config.retry_base = Duration::from_secs(100);
        Issuer::new(store.clone(), config).unwrap()
    }

    /// Stores a certificate for `a.test` issued `age_days` ago for `lifetime_days`.
    async fn store_cert(store: &MemStore, source: &str, age_days: i64, lifetime_days: i64) {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let start = time::OffsetDateTime::now_utc() - time::Duration::days(age_days);
        params.not_before = start;
        params.not_after = start + time::Duration::days(lifetime_days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = StoredCert {
            cert_pem: params.self_signed(&key).unwrap().pem(),
            key_pem: key.serialize_pem(),
            not_after: None,
            source: Some(source.into()),
        };
        store
            .put("com.roo.cert:a.test", to_json(&cert).unwrap())
            .await
            .unwrap();
    }

    fn is_order(due: &Due) -> bool {
        matches!(due, Due::Now(Work::Order))
    }

    fn at(due: &Due) -> SystemTime {
        match due {
            Due::At(t) => *t,
            Due::Now(_) => panic!("due now"),
        }
    }

    #[tokio::test]
    async fn what_falls_due_when() {
        let store = MemStore::default();
        let issuer = issuer(&store);
        let now = SystemTime::now();
        assert!(
            is_order(&issuer.due("a.test").await.unwrap()),
            "no certificate"
        );

        store_cert(&store, "acme", 1, 90).await;
        let renew = at(&issuer.due("a.test").await.unwrap());
        let days = |t: SystemTime| t.duration_since(now).unwrap().as_secs_f64() / 86400.0;
        assert!(
            (days(renew) - 59.0).abs() < 0.01,
            "renewal two thirds in: {}",
            days(renew)
        );

        store_cert(&store, "acme", 61, 90).await;
        assert!(
            is_order(&issuer.due("a.test").await.unwrap()),
            "past two thirds"
        );

        store_cert(&store, "manual", 61, 90).await;
        let until = at(&issuer.due("a.test").await.unwrap());
        assert!(
            (days(until) - 29.0).abs() < 0.01,
            "a manual one lasts until it expires"
        );
        store_cert(&store, "manual", 91, 90).await;
        assert!(
            is_order(&issuer.due("a.test").await.unwrap()),
            "expired manual"
        );

        let status = HostStatus {
            failures: 1,
            next_attempt: unix(now) + 500,
            ..HostStatus::default()
        };
        store
            .put("com.roo.acme.status:a.test", to_json(&status).unwrap())
            .await
            .unwrap();
        assert_eq!(
            unix(at(&issuer.due("a.test").await.unwrap())),
            unix(now) + 500,
            "backing off"
        );

        store
            .put("com.roo.cert:a.test", b"{not json".to_vec())
            .await
            .unwrap();
        store.delete("com.roo.acme.status:a.test").await.unwrap();
        assert!(
            is_order(&issuer.due("a.test").await.unwrap()),
            "unreadable certificate"
        );
    }

    async fn status(store: &MemStore) -> HostStatus {
        get_json(store, "com.roo.acme.status:a.test")
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn failures_back_off_and_rate_limits_wait_as_told() {
        let store = MemStore::default();
        let issuer = issuer(&store);
        let now = unix(SystemTime::now());
        issuer
            .failed("a.test", AcmeError::Timeout("order"), None)
            .await;
        let s = status(&store).await;
        assert_eq!(s.failures, 1);
        assert!(s.last_error.as_deref().unwrap().contains("timed out"));
        assert!((now + 80..=now + 121).contains(&s.next_attempt), "{s:?}");
        issuer
            .failed("a.test", AcmeError::Timeout("order"), None)
            .await;
        let s = status(&store).await;
        assert_eq!(s.failures, 2);
        assert!(
            (now + 160..=now + 241).contains(&s.next_attempt),
            "doubled: {s:?}"
        );

        let problem: instant_acme::Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates"}"#,
        )
        .unwrap();
        let told = SystemTime::now() + Duration::from_secs(7200);
        issuer
            .failed(
                "a.test",
                AcmeError::Acme(problem.clone().into()),
                Some(told),
            )
            .await;
        let s = status(&store).await;
        assert_eq!(s.next_attempt, unix(told), "as long as the CA said");
        issuer
            .failed("a.test", AcmeError::Acme(problem.into()), None)
            .await;
        assert!(
            status(&store).await.next_attempt >= now + 3600,
            "an hour without Retry-After"
        );
    }

    #[test]
    fn host_names_the_ca_may_see() {
        for ok in [
            "example.com",
            "a-b.example.co.uk",
            "xn--bcher-kva.example",
            "a1.test",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "*.example.com",
            "localhost",
            "10.0.0.1",
            "::1",
            "a..b",
            "-a.com",
            "a-.com",
            "under_score.com",
            "a.123",
            "",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert!(check_host(&format!("{}.com", "a".repeat(64))).is_err());
    }
}
