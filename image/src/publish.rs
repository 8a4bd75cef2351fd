//! `keelson-image publish`: makes a directory of bundles an update channel.
//!
//! Every `*.bundle` in the directory is opened and its signature checked (a channel must
//! never list a bundle its nodes would refuse); the list, with each bundle's size and
//! SHA-256, is signed into `channel.json` with an expiry. Serve the directory over HTTP and
//! point nodes' `update.channel` at it. Re-run `publish` to add a release or to renew the
//! expiry before it passes.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use keelson_update::bundle::BundleReader;
use keelson_update::channel::{self, Channel, Release, CHANNEL_FILE};
use keelson_update::keys::{PublicKey, SigningKey, TrustRoot};

/// What `publish` needs.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The channel directory, holding the bundles.
    pub dir: PathBuf,
    /// The key that signs the metadata (and whose bundles are accepted).
    pub signing_key: PathBuf,
    /// Further public keys whose bundles may be listed (key rotation).
    pub trusted_keys: Vec<PathBuf>,
    /// The channel's name.
    pub name: String,
    /// How long the metadata stays valid, in seconds from now.
    pub valid_for_secs: i64,
    /// Now, in Unix seconds.
    pub now: i64,
}

/// Writes `DIR/channel.json`; returns what it lists.
pub fn publish(options: &PublishOptions) -> anyhow::Result<Channel> {
    ensure!(
        options.valid_for_secs > 0,
        "the metadata must stay valid for some time: give a positive --valid-for"
    );
    let text = std::fs::read_to_string(&options.signing_key)
        .with_context(|| format!("reading {}", options.signing_key.display()))?;
    let key = SigningKey::parse(&text)
        .with_context(|| format!("reading {}", options.signing_key.display()))?;
    let mut keys = vec![key.public()];
    for path in &options.trusted_keys {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.push(PublicKey::parse(&text).with_context(|| format!("reading {}", path.display()))?);
    }
    let trust = TrustRoot::new(keys);
    let mut bundles: Vec<PathBuf> = std::fs::read_dir(&options.dir)
        .with_context(|| format!("reading the channel directory {}", options.dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "bundle")
        })
        .collect();
    bundles.sort();
    ensure!(
        !bundles.is_empty(),
        "{} holds no *.bundle files: copy the bundles `keelson-image build --signing-key` wrote into it",
        options.dir.display()
    );
    let releases = bundles
        .iter()
        .map(|path| release_of(path, &trust))
        .collect::<anyhow::Result<Vec<Release>>>()?;
    let channel = Channel {
        format: channel::FORMAT,
        name: options.name.clone(),
        signed_at: channel::format_time(options.now),
        expires: channel::format_time(options.now + options.valid_for_secs),
        releases,
    };
    let target = options.dir.join(CHANNEL_FILE);
    let staging = options.dir.join(format!(".{CHANNEL_FILE}.new"));
    std::fs::write(&staging, channel::sign(&channel, &key))
        .with_context(|| format!("writing {}", staging.display()))?;
    std::fs::rename(&staging, &target).with_context(|| format!("writing {}", target.display()))?;
    Ok(channel)
}

fn release_of(path: &Path, trust: &TrustRoot) -> anyhow::Result<Release> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = BundleReader::open(std::io::BufReader::new(file), trust)
        .with_context(|| format!("{} cannot be published", path.display()))?;
    let manifest = reader.manifest().clone();
    let (sha256, size) = keelson_update::bundle::sha256_of(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    )?;
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))?;
    Ok(Release {
        version: manifest.version,
        architecture: manifest.architecture,
        bundle: name.to_owned(),
        size,
        sha256,
    })
}

/// Parses a validity like `30d`, `12h`, `90m` or `3600` (seconds).
pub fn parse_validity(text: &str) -> anyhow::Result<i64> {
    let (number, unit) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => (&text[..at], Some(unit)),
        _ => (text, None),
    };
    let number: i64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a validity: give e.g. 30d, 12h, 90m"))?;
    let scale = match unit {
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        Some(other) => anyhow::bail!("{other:?} in {text:?} is not a unit: use s, m, h or d"),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validities_read_as_people_write_them() {
        assert_eq!(parse_validity("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_validity("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_validity("90m").unwrap(), 90 * 60);
        assert_eq!(parse_validity("3600").unwrap(), 3600);
        assert!(parse_validity("soon").is_err());
        assert!(parse_validity("3w").is_err());
    }

    #[test]
    fn an_empty_directory_is_not_a_channel() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        crate::keygen(&key).unwrap();
        let error = publish(&PublishOptions {
            dir: dir.path().to_owned(),
            signing_key: key,
            trusted_keys: Vec::new(),
            name: "stable".into(),
            valid_for_secs: 3600,
            now: 0,
        })
        .unwrap_err();
        assert!(error.to_string().contains("no *.bundle files"), "{error}");
    }
}
