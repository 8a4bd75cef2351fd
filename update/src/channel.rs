//! Update channels: a directory served over HTTP holding bundles and one signed
//! `channel.json` that lists them.
//!
//! The metadata says which releases exist, for which architecture, where each bundle is
//! and until when the list may be believed. It is signed with the same Ed25519 keys as the
//! bundles, so a machine that trusts a key trusts the channels it signs. The expiry is what
//! keeps a stale mirror (or an attacker replaying an old list) from freezing a fleet on an
//! old release without anyone noticing: past it, a node refuses the list and says so.
//!
//! The file is an envelope `{"payload": "<JSON text>", "signatures": [...]}`: the signature
//! covers the payload's exact bytes, so nothing depends on re-serialising JSON the same way.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, SigningKey, TrustRoot};

/// The metadata file in a channel directory.
pub const CHANNEL_FILE: &str = "channel.json";
/// The metadata format this build reads and writes.
pub const FORMAT: u32 = 1;
/// Signatures are over this context followed by the payload, so that a channel signature
/// can never pass for a bundle signature or the other way round.
pub const SIGNING_CONTEXT: &[u8] = b"keelson channel metadata v1\0";
/// The largest metadata file a node reads.
pub const MAX_BYTES: u64 = 1 << 20;

/// The signed list of releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Channel {
    /// [`FORMAT`].
    pub format: u32,
    /// The channel's name (`stable`, `beta`…), for messages.
    pub name: String,
    /// When the list was signed (RFC 3339, UTC).
    pub signed_at: String,
    /// After this moment (RFC 3339, UTC) the list must not be believed.
    pub expires: String,
    /// The releases, in any order.
    pub releases: Vec<Release>,
}

/// One release in a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    /// The OS version (semver).
    pub version: String,
    /// The machine architecture (`x86_64`).
    pub architecture: String,
    /// The bundle: relative to the channel directory, or an absolute `http://` URL.
    pub bundle: String,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The bundle file's SHA-256 (hex).
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvelopeSignature {
    key_id: String,
    signature: String,
}

/// Why channel metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Not the envelope, or not JSON.
    #[error("the channel metadata is not a signed channel.json ({0}); is the URL the channel directory?")]
    NotAChannel(String),
    /// Signed by none of the keys this machine trusts.
    #[error("the channel metadata is signed by key {signers}, which this machine does not trust (it trusts {trusted}); sign it with a trusted key (keelson-image publish)")]
    UnknownKey {
        /// The keys that signed it.
        signers: String,
        /// The keys the machine trusts.
        trusted: String,
    },
    /// A trusted key's signature does not match.
    #[error("the channel metadata's signature by key {0} does not match: the file was altered after signing")]
    BadSignature(String),
    /// A format this build does not read.
    #[error("channel metadata format {0} is not supported (this build reads format {FORMAT})")]
    UnsupportedFormat(u32),
    /// Signed, but the content is wrong.
    #[error("the channel metadata is invalid: {0}")]
    Invalid(String),
    /// Past its expiry.
    #[error("the channel metadata of {name:?} expired at {expires} (it is now {now}); the publisher must re-sign it (keelson-image publish) before nodes will trust it again")]
    Expired {
        /// The channel.
        name: String,
        /// When it expired.
        expires: String,
        /// The machine's time.
        now: String,
    },
}

impl Channel {
    /// The release to move to from `running` on `architecture`: the highest version above
    /// it, or `None` when the node is up to date.
    pub fn latest_for(&self, architecture: &str, running: &str) -> Option<&Release> {
        let running = semver::Version::parse(running).ok();
        self.releases
            .iter()
            .filter(|release| release.architecture == architecture)
            .filter_map(|release| {
                semver::Version::parse(&release.version)
                    .ok()
                    .map(|version| (version, release))
            })
            .filter(|(version, _)| running.as_ref().is_none_or(|running| version > running))
            .max_by(|(left, _), (right, _)| left.cmp(right))
            .map(|(_, release)| release)
    }

    /// The expiry as Unix seconds.
    pub fn expires_unix(&self) -> Result<i64, ChannelError> {
        parse_time(&self.expires)
    }

    fn validate(&self) -> Result<(), ChannelError> {
        if self.format != FORMAT {
            return Err(ChannelError::UnsupportedFormat(self.format));
        }
        self.expires_unix()?;
        parse_time(&self.signed_at)?;
        for release in &self.releases {
            semver::Version::parse(&release.version).map_err(|error| {
                ChannelError::Invalid(format!(
                    "release {:?} is not a semantic version: {error}",
                    release.version
                ))
            })?;
            if release.bundle.is_empty()
                || release.bundle.contains("..")
                || release.bundle.starts_with('/')
            {
                return Err(ChannelError::Invalid(format!(
                    "release {} names bundle {:?}: give a file in the channel directory or an http:// URL",
                    release.version, release.bundle
                )));
            }
            if release.sha256.len() != 64 || !release.sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(ChannelError::Invalid(format!(
                    "release {} has a malformed SHA-256",
                    release.version
                )));
            }
        }
        Ok(())
    }
}

/// Signs `channel` with `key`; returns the text of `channel.json`.
pub fn sign(channel: &Channel, key: &SigningKey) -> String {
    let payload = serde_json::to_string_pretty(channel).unwrap_or_default();
    let mut message = SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(payload.as_bytes());
    let envelope = Envelope {
        signatures: vec![EnvelopeSignature {
            key_id: hex::encode(key.public().id().0),
            signature: base64::engine::general_purpose::STANDARD.encode(key.sign(&message)),
        }],
        payload,
    };
    let mut text = serde_json::to_string_pretty(&envelope).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads `channel.json`: one signature by a trusted key must match, the content must be
/// valid, and `now` (Unix seconds) must be before its expiry.
pub fn verify(bytes: &[u8], trust: &TrustRoot, now: i64) -> Result<Channel, ChannelError> {
    let envelope: Envelope = serde_json::from_slice(bytes)
        .map_err(|error| ChannelError::NotAChannel(error.to_string()))?;
    let mut message = SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(envelope.payload.as_bytes());
    let mut signers = Vec::new();
    let mut verified = false;
    for signature in &envelope.signatures {
        let id = parse_key_id(&signature.key_id);
        let Some(key) = id.as_ref().and_then(|id| trust.find(id)) else {
            signers.push(short_id(&signature.key_id));
            continue;
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&signature.signature)
            .unwrap_or_default();
        if !key.verifies(&message, &raw) {
            return Err(ChannelError::BadSignature(short_id(&signature.key_id)));
        }
        verified = true;
    }
    if !verified {
        return Err(ChannelError::UnknownKey {
            signers: if signers.is_empty() {
                "(none)".to_owned()
            } else {
                signers.join(", ")
            },
            trusted: trust.ids().join(", "),
        });
    }
    let channel: Channel = serde_json::from_str(&envelope.payload)
        .map_err(|error| ChannelError::Invalid(error.to_string()))?;
    channel.validate()?;
    let expires = channel.expires_unix()?;
    if now >= expires {
        return Err(ChannelError::Expired {
            name: channel.name.clone(),
            expires: channel.expires.clone(),
            now: format_time(now),
        });
    }
    Ok(channel)
}

/// The URL of a release's bundle in the channel at `channel_url` (the directory).
pub fn bundle_url(channel_url: &str, release: &Release) -> String {
    if release.bundle.starts_with("http://") || release.bundle.starts_with("https://") {
        release.bundle.clone()
    } else {
        format!("{}/{}", channel_url.trim_end_matches('/'), release.bundle)
    }
}

/// The URL of the metadata of the channel at `channel_url`.
pub fn metadata_url(channel_url: &str) -> String {
    if channel_url.ends_with(".json") {
        channel_url.to_owned()
    } else {
        format!("{}/{CHANNEL_FILE}", channel_url.trim_end_matches('/'))
    }
}

fn parse_key_id(text: &str) -> Option<KeyId> {
    let bytes = hex::decode(text).ok()?;
    Some(KeyId(bytes.try_into().ok()?))
}

fn short_id(text: &str) -> String {
    text.chars().take(16).collect()
}

/// Parses an RFC 3339 time into Unix seconds.
pub fn parse_time(text: &str) -> Result<i64, ChannelError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|moment| moment.unix_timestamp())
        .map_err(|error| {
            ChannelError::Invalid(format!("{text:?} is not an RFC 3339 time: {error}"))
        })
}

/// Formats Unix seconds as RFC 3339 in UTC.
pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{unix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_219_200;

    fn channel(expires: i64) -> Channel {
        let release = |version: &str, architecture: &str| Release {
            version: version.into(),
            architecture: architecture.into(),
            bundle: format!("keelson-{version}.bundle"),
            size: 10,
            sha256: "ab".repeat(32),
        };
        Channel {
            format: FORMAT,
            name: "stable".into(),
            signed_at: format_time(NOW - 60),
            expires: format_time(expires),
            releases: vec![
                release("0.1.0", "x86_64"),
                release("0.2.0", "x86_64"),
                release("0.3.0", "aarch64"),
                release("0.1.1", "x86_64"),
            ],
        }
    }

    fn key_and_trust() -> (SigningKey, TrustRoot) {
        let (key, _) = SigningKey::generate().unwrap();
        let trust = TrustRoot::new(vec![key.public()]);
        (key, trust)
    }

    #[test]
    fn signed_metadata_reads_back_and_picks_the_newest_release_for_the_machine() {
        let (key, trust) = key_and_trust();
        let text = sign(&channel(NOW + 3600), &key);
        let read = verify(text.as_bytes(), &trust, NOW).unwrap();
        assert_eq!(read, channel(NOW + 3600));
        assert_eq!(read.latest_for("x86_64", "0.1.0").unwrap().version, "0.2.0");
        assert!(read.latest_for("x86_64", "0.2.0").is_none());
        assert_eq!(
            read.latest_for("aarch64", "0.1.0").unwrap().version,
            "0.3.0"
        );
        assert_eq!(
            bundle_url(
                "http://10.0.2.100:8080/stable/",
                read.latest_for("x86_64", "0.1.0").unwrap()
            ),
            "http://10.0.2.100:8080/stable/keelson-0.2.0.bundle"
        );
        assert_eq!(
            metadata_url("http://host/stable"),
            "http://host/stable/channel.json"
        );
    }

    #[test]
    fn expired_metadata_is_refused_with_both_times() {
        let (key, trust) = key_and_trust();
        let text = sign(&channel(NOW), &key);
        let error = verify(text.as_bytes(), &trust, NOW).unwrap_err();
        assert!(matches!(error, ChannelError::Expired { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("expired at 2026-11-21T00:00:00Z"),
            "{message}"
        );
        assert!(message.contains("re-sign"), "{message}");
    }

    #[test]
    fn altered_or_foreign_metadata_is_refused() {
        let (key, trust) = key_and_trust();
        let text = sign(&channel(NOW + 3600), &key);
        let altered = text.replace("0.2.0", "9.2.0");
        assert!(matches!(
            verify(altered.as_bytes(), &trust, NOW),
            Err(ChannelError::BadSignature(_))
        ));
        let (other, _) = SigningKey::generate().unwrap();
        let foreign = sign(&channel(NOW + 3600), &other);
        let error = verify(foreign.as_bytes(), &trust, NOW).unwrap_err();
        assert!(matches!(error, ChannelError::UnknownKey { .. }), "{error}");
        assert!(matches!(
            verify(b"<html>not found</html>", &trust, NOW),
            Err(ChannelError::NotAChannel(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reader() {
        let (_, trust) = key_and_trust();
        bolero::check!().for_each(|bytes: &[u8]| {
            let _ = verify(bytes, &trust, NOW);
        });
    }

    #[test]
    fn releases_must_be_well_formed() {
        let (key, trust) = key_and_trust();
        let mut escaping = channel(NOW + 3600);
        escaping.releases[0].bundle = "../../etc/passwd".into();
        let error = verify(sign(&escaping, &key).as_bytes(), &trust, NOW).unwrap_err();
        assert!(matches!(error, ChannelError::Invalid(_)), "{error}");
        let mut unversioned = channel(NOW + 3600);
        unversioned.releases[0].version = "latest".into();
        let error = verify(sign(&unversioned, &key).as_bytes(), &trust, NOW).unwrap_err();
        assert!(error.to_string().contains("\"latest\""), "{error}");
    }
}
