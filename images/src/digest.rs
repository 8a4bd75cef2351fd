//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`) and a reader that computes one
//! while the bytes stream past, so that nothing is read twice to be verified.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A digest algorithm the store verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// SHA-256, what every registry uses.
    Sha256,
    /// SHA-512, which the OCI specification also registers.
    Sha512,
}

impl Algorithm {
    /// The name in a digest string.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            Algorithm::Sha256 => &ring::digest::SHA256,
            Algorithm::Sha512 => &ring::digest::SHA512,
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a text is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a digest: {reason}")]
pub struct DigestError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        Digest::from_ring(algorithm, ring::digest::digest(algorithm.ring(), bytes))
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    fn from_ring(algorithm: Algorithm, digest: ring::digest::Digest) -> Digest {
        Digest {
            algorithm,
            hex: hex::encode(digest.as_ref()),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hexadecimal digest, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A short form for tables: the first 12 hex digits.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Digest, DigestError> {
        let refuse = |reason: &str| DigestError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, hex) = text
            .split_once(':')
            .ok_or_else(|| refuse("expected <algorithm>:<hex>, e.g. sha256:…"))?;
        let algorithm = match name {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(refuse("the algorithm must be sha256 or sha512")),
        };
        let well_formed = hex.len() == algorithm.hex_len()
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !well_formed {
            return Err(refuse(&format!(
                "a {name} digest is {} hex digits (0-9, a-f)",
                algorithm.hex_len()
            )));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads through `inner`, computing the digest and counting the bytes.
pub struct DigestingReader<R> {
    inner: R,
    context: ring::digest::Context,
    algorithm: Algorithm,
    bytes: u64,
}

impl<R: Read> DigestingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, algorithm: Algorithm) -> DigestingReader<R> {
        DigestingReader {
            inner,
            context: ring::digest::Context::new(algorithm.ring()),
            algorithm,
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything read, and the reader.
    pub fn finish(self) -> (Digest, u64, R) {
        (
            Digest::from_ring(self.algorithm, self.context.finish()),
            self.bytes,
            self.inner,
        )
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.context.update(&buffer[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_round_trips_and_matches_the_known_value() {
        // The OCI specification's empty JSON descriptor: sha256 of "{}".
        let empty = Digest::sha256(b"{}");
        assert_eq!(
            empty.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(empty.to_string().parse::<Digest>().unwrap(), empty);
        let mut reader = DigestingReader::new(&b"{}"[..], Algorithm::Sha256);
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        assert_eq!(reader.finish().0, empty);
    }

    #[test]
    fn malformed_digests_are_refused() {
        for bad in [
            "sha256",
            "md5:00",
            "sha256:ABC",
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
