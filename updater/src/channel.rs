//! Fetching from an update channel: its signed metadata and its bundles, over HTTP.
//!
//! The metadata is verified against the image's trusted keys and its expiry before anything
//! in it is believed; a bundle fetched from it is streamed straight into the engine, which
//! checks the bundle's own signature from its first bytes. The channel only says where to
//! look: a bundle is trusted for its signature, never for where it came from.

use std::io::Read;
use std::time::Duration;

use keelson_update::channel::{self, Channel, Release, MAX_BYTES};
use keelson_update::keys::TrustRoot;

use crate::UpdateError;

/// How long connecting and the response headers may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a whole bundle download may take.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

fn agent(body_timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(CONNECT_TIMEOUT))
        .timeout_recv_body(Some(body_timeout))
        .build()
        .into()
}

fn unreachable(url: &str, error: impl std::fmt::Display) -> UpdateError {
    UpdateError::Source {
        url: url.to_owned(),
        reason: error.to_string(),
    }
}

/// The verified metadata of the channel at `channel_url`.
pub fn fetch_metadata(channel_url: &str, trust: &TrustRoot) -> Result<Channel, UpdateError> {
    let url = channel::metadata_url(channel_url);
    let mut response = agent(CONNECT_TIMEOUT)
        .get(&url)
        .call()
        .map_err(|error| unreachable(&url, error))?;
    let bytes = response
        .body_mut()
        .with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .map_err(|error| unreachable(&url, error))?;
    channel::verify(&bytes, trust, keelson_linux::clock::unix_now()).map_err(|error| {
        UpdateError::Channel {
            url: url.clone(),
            reason: error.to_string(),
        }
    })
}

/// Opens the bundle at `url` as a stream.
pub fn open_bundle(url: &str) -> Result<impl Read + Send + 'static, UpdateError> {
    let response = agent(BUNDLE_TIMEOUT)
        .get(url)
        .call()
        .map_err(|error| unreachable(url, error))?;
    Ok(response.into_body().into_reader())
}

/// A channel's verdict for this node.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The channel URL.
    pub url: String,
    /// The metadata.
    pub channel: Channel,
    /// The release to move to, when there is one.
    pub latest: Option<Release>,
}

/// Fetches the channel and picks the release this node would move to.
pub fn check(
    channel_url: &str,
    trust: &TrustRoot,
    running_version: &str,
) -> Result<Checked, UpdateError> {
    let channel = fetch_metadata(channel_url, trust)?;
    let latest = channel
        .latest_for(std::env::consts::ARCH, running_version)
        .cloned();
    Ok(Checked {
        url: channel_url.to_owned(),
        channel,
        latest,
    })
}
