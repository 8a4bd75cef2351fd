//! HTTP(S) GET for config URLs, Ignition pointer configs and file sources, with a deadline
//! and a size cap.
//!
//! `https://` trusts the root's CA bundle (`/etc/ssl/certs/ca-certificates.crt`, Mozilla's
//! roots as Debian ships them) plus the authorities a config names; nothing else, so a
//! node with a private CA trusts it only because its config says so.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// The largest document or file fetched.
pub const MAX_BYTES: u64 = 64 << 20;
/// The root's CA bundle.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The certificate authorities an `https://` fetch trusts.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    roots: Vec<Certificate<'static>>,
    /// How many of them a config named.
    from_config: usize,
}

impl Trust {
    /// The root's bundle at `bundle` (when it exists) plus `extra` (PEM texts, each one or
    /// more certificates).
    pub fn new(bundle: &Path, extra: &[String]) -> Result<Trust, String> {
        let mut trust = Trust::default();
        if let Ok(pem) = std::fs::read(bundle) {
            trust
                .add_pem(&pem)
                .map_err(|reason| format!("{}: {reason}", bundle.display()))?;
        }
        let from_bundle = trust.roots.len();
        for (index, pem) in extra.iter().enumerate() {
            trust
                .add_pem(pem.as_bytes())
                .map_err(|reason| format!("certificate authority {index}: {reason}"))?;
        }
        trust.from_config = trust.roots.len() - from_bundle;
        Ok(trust)
    }

    /// The root's bundle plus `extra`.
    pub fn system_and(extra: &[String]) -> Result<Trust, String> {
        Trust::new(Path::new(SYSTEM_BUNDLE), extra)
    }

    fn add_pem(&mut self, pem: &[u8]) -> Result<(), String> {
        let before = self.roots.len();
        for item in ureq::tls::parse_pem(pem) {
            match item.map_err(|error| format!("not PEM: {error}"))? {
                PemItem::Certificate(certificate) => self.roots.push(certificate),
                _ => continue,
            }
        }
        if self.roots.len() == before {
            return Err("holds no certificate".into());
        }
        Ok(())
    }

    /// How many authorities are trusted.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// Fetches `url` (`http://` or `https://`), giving up after `timeout` or past `limit` bytes.
pub async fn get(
    url: &str,
    timeout: Duration,
    limit: u64,
    trust: &Trust,
) -> Result<Vec<u8>, String> {
    let url = url.to_owned();
    let trust = trust.clone();
    tokio::task::spawn_blocking(move || get_blocking(&url, timeout, limit, &trust))
        .await
        .map_err(|error| format!("the fetch task failed: {error}"))?
}

/// [`get`] for callers that may block (a blocking task of their own).
pub fn get_blocking(
    url: &str,
    timeout: Duration,
    limit: u64,
    trust: &Trust,
) -> Result<Vec<u8>, String> {
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!("{url}: only http:// and https:// URLs are fetched"));
    }
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(trust.roots.clone())))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .tls_config(tls)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|error| {
        let text = error.to_string();
        if text.contains("certificate") {
            format!(
                "GET {url} failed: {text}: the node trusts the root's CA bundle and {} \
                 authorities from its config; add the server's CA to certificateAuthorities \
                 (Ignition: ignition.security.tls.certificateAuthorities)",
                trust.from_config
            )
        } else {
            format!("GET {url} failed: {text}")
        }
    })?;
    response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|error| format!("reading {url} failed (the limit is {limit} bytes): {error}"))
}
