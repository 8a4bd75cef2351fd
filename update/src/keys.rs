//! Ed25519 keys that sign update bundles and channel metadata, and the set a machine trusts.
//!
//! Files are text so that they survive copy and paste:
//! - a signing key is its PKCS#8 document in base64 between
//!   `-----BEGIN KEELSON SIGNING KEY-----` lines (kept mode 0600 by whoever writes it);
//! - a public key is one line, `keelson-ed25519 <base64 of the 32 raw bytes>`, optionally
//!   followed by a comment.
//!
//! A key is named by its id: the SHA-256 of the raw public key, shown as 16 hex digits.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

const PRIVATE_BEGIN: &str = "-----BEGIN KEELSON SIGNING KEY-----";
const PRIVATE_END: &str = "-----END KEELSON SIGNING KEY-----";
const PUBLIC_PREFIX: &str = "keelson-ed25519";

/// Where an image keeps the public keys it trusts for updates, one `*.pub` file each.
pub const TRUST_DIR: &str = "/usr/share/keelson/update-keys";

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a key in Keelson's format.
    #[error("{0}")]
    Malformed(String),
    /// The key generator failed (no entropy source).
    #[error("could not generate a key: {0}")]
    Generate(String),
}

/// A key's identity: SHA-256 of its raw public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The first 16 hex digits, as shown to people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

/// A public key that verifies signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
}

impl PublicKey {
    /// Parses the one-line public key format.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .ok_or_else(|| KeyError::Malformed("the public key file is empty".to_owned()))?;
        let mut words = line.split_whitespace();
        if words.next() != Some(PUBLIC_PREFIX) {
            return Err(KeyError::Malformed(format!(
                "a public key line starts with `{PUBLIC_PREFIX}`"
            )));
        }
        let encoded = words
            .next()
            .ok_or_else(|| KeyError::Malformed("the public key line has no key".to_owned()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|error| {
                KeyError::Malformed(format!("the public key is not base64: {error}"))
            })?;
        let raw: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            KeyError::Malformed(format!(
                "an Ed25519 public key is 32 bytes, this one is {}",
                bytes.len()
            ))
        })?;
        Ok(PublicKey { raw })
    }

    /// The one-line text form, with a comment naming the key id.
    pub fn to_text(&self) -> String {
        format!(
            "{PUBLIC_PREFIX} {} key-id:{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.raw),
            self.id().short()
        )
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        KeyId(Sha256::digest(self.raw).into())
    }

    /// True when `signature` is this key's signature over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// A private key that signs.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public().id())
    }
}

impl SigningKey {
    /// Generates a key; returns it with its file text.
    pub fn generate() -> Result<(SigningKey, String), KeyError> {
        let random = ring::rand::SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&random)
            .map_err(|error| KeyError::Generate(error.to_string()))?;
        let text = format!(
            "{PRIVATE_BEGIN}\n{}\n{PRIVATE_END}\n",
            base64::engine::general_purpose::STANDARD.encode(document.as_ref())
        );
        Ok((SigningKey::parse(&text)?, text))
    }

    /// Parses a signing key file.
    pub fn parse(text: &str) -> Result<SigningKey, KeyError> {
        let body = text
            .split_once(PRIVATE_BEGIN)
            .and_then(|(_, rest)| rest.split_once(PRIVATE_END))
            .map(|(body, _)| body)
            .ok_or_else(|| {
                KeyError::Malformed(format!(
                    "a signing key sits between `{PRIVATE_BEGIN}` and `{PRIVATE_END}` lines \
                     (make one with `keelson-image keygen`)"
                ))
            })?;
        let compact: String = body.split_whitespace().collect();
        let document = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|error| {
                KeyError::Malformed(format!("the signing key is not base64: {error}"))
            })?;
        let pair = Ed25519KeyPair::from_pkcs8(&document).map_err(|error| {
            KeyError::Malformed(format!(
                "the signing key is not an Ed25519 PKCS#8 key: {error}"
            ))
        })?;
        Ok(SigningKey { pair })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey { raw }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }
}

/// The public keys a machine accepts signatures from. More than one, so that keys rotate:
/// an image trusting the old and the new key accepts bundles signed by either.
#[derive(Debug, Clone, Default)]
pub struct TrustRoot {
    keys: Vec<PublicKey>,
}

impl TrustRoot {
    /// A trust root of exactly these keys.
    pub fn new(keys: Vec<PublicKey>) -> TrustRoot {
        TrustRoot { keys }
    }

    /// Reads every `*.pub` file of `directory` (a missing directory trusts nothing).
    pub fn load(directory: &std::path::Path) -> std::io::Result<TrustRoot> {
        let mut keys = Vec::new();
        let entries = match std::fs::read_dir(directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TrustRoot::default())
            }
            Err(error) => return Err(error),
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "pub"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path)?;
            let key = PublicKey::parse(&text).map_err(|error| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {error}", path.display()),
                )
            })?;
            keys.push(key);
        }
        Ok(TrustRoot { keys })
    }

    /// The trusted key with this id.
    pub fn find(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|key| key.id() == *id)
    }

    /// The ids of every trusted key, for error messages.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|key| key.id().short()).collect()
    }

    /// True when nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_verify() {
        let (key, text) = SigningKey::generate().unwrap();
        let again = SigningKey::parse(&text).unwrap();
        assert_eq!(key.public(), again.public());
        let public = PublicKey::parse(&key.public().to_text()).unwrap();
        let signature = key.sign(b"message");
        assert!(public.verifies(b"message", &signature));
        assert!(!public.verifies(b"massage", &signature));
    }

    #[test]
    fn malformed_key_files_say_what_is_wrong() {
        let error = PublicKey::parse("ssh-ed25519 AAAA")
            .unwrap_err()
            .to_string();
        assert!(error.contains("keelson-ed25519"), "{error}");
        let error = PublicKey::parse("keelson-ed25519 AAAA")
            .unwrap_err()
            .to_string();
        assert!(error.contains("32 bytes"), "{error}");
        let error = SigningKey::parse("hello").unwrap_err().to_string();
        assert!(error.contains("keelson-image keygen"), "{error}");
    }
}
