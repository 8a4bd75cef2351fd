//! Plain HTTP GET for config URLs and Ignition file sources, with timeouts and a size cap.

use std::time::Duration;

/// The largest document or file fetched.
pub const MAX_BYTES: u64 = 64 << 20;

/// Fetches `url` (http:// only), giving up after `timeout` or past `limit` bytes.
pub async fn get(url: &str, timeout: Duration, limit: u64) -> Result<Vec<u8>, String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || get_blocking(&url, timeout, limit))
        .await
        .map_err(|error| format!("the fetch task failed: {error}"))?
}

fn get_blocking(url: &str, timeout: Duration, limit: u64) -> Result<Vec<u8>, String> {
    if !url.starts_with("http://") {
        return Err(format!("{url}: only http:// URLs are fetched"));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|error| format!("GET {url} failed: {error}"))?;
    response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|error| format!("reading {url} failed (the limit is {limit} bytes): {error}"))
}
