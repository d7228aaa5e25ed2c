//! The HTTP client that talks to the CA: TLS verified against the system roots plus an extra
//! root (`ROO_ACME_CA_FILE`), every request bounded in time, and `Retry-After` of rate-limit
//! answers noted for the order that got them.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::AcmeError;

tokio::task_local! {
    /// Where the current order notes the `Retry-After` of a 429 or 503 from the CA.
    pub(crate) static RETRY_AFTER: Arc<Mutex<Option<SystemTime>>>;
}

pub(crate) struct CaClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl CaClient {
    pub(crate) fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<CaClient, AcmeError> {
        let roots = crate::roots::system_and(ca_file)
            .map_err(|e| AcmeError::Config(format!("ROO_ACME_CA_FILE {e}")))?;
        let tls = crate::roots::client_config(roots)
            .map_err(|e| AcmeError::Config(format!("TLS: {e}")))?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(CaClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(req);
        let timeout = self.timeout;
        let note = RETRY_AFTER.try_with(Arc::clone).ok();
        Box::pin(async move {
            let rsp = match tokio::time::timeout(timeout, sent).await {
                Err(_) => {
                    return Err(instant_acme::Error::Str(
                        "the ACME server did not answer in time",
                    ))
                }
                Ok(Err(e)) => return Err(instant_acme::Error::Other(Box::new(e))),
                Ok(Ok(rsp)) => rsp,
            };
            if matches!(
                rsp.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                if let (Some(note), Some(at)) = (note, retry_after(rsp.headers())) {
                    if let Ok(mut slot) = note.lock() {
                        *slot = Some(at);
                    }
                }
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &http::HeaderMap) -> Option<SystemTime> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    httpdate::parse_http_date(value).ok()
}
