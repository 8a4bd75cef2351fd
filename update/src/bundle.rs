//! The signed update bundle: one file, read front to back, never seeking.
//!
//! ```text
//! "KEELBND" 0x01          8 bytes: magic and format version
//! key id                 32 bytes: SHA-256 of the signer's Ed25519 public key
//! signature              64 bytes: Ed25519 over SIGNING_CONTEXT + manifest
//! manifest length         4 bytes: little endian, at most MAX_MANIFEST_BYTES
//! manifest                JSON (Manifest)
//! artifacts               kernel, initrd, root image: each exactly its manifest size
//! ```
//!
//! The signature covers the manifest, and the manifest pins every artifact's size and
//! SHA-256, so one signature check authenticates the whole stream. The key id and signature
//! come before the manifest so that a reader checks them before it parses anything an
//! attacker could have written. [`BundleReader`] hashes each artifact as it passes and
//! fails at the first byte that cannot be right: a short stream is
//! [`BundleError::Truncated`], a wrong byte [`BundleError::DigestMismatch`] as soon as the
//! artifact ends.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, SigningKey, TrustRoot};

/// The first 8 bytes of every bundle: `KEELBND` and the format version.
pub const MAGIC: [u8; 8] = *b"KEELBND\x01";
/// Where the header's fields lie: magic (8 bytes), signer key id (32), Ed25519 signature
/// of the manifest (64), manifest length (4, little-endian); the manifest follows.
pub mod header {
    /// The signer's key id.
    pub const KEY_ID: std::ops::Range<usize> = 8..40;
    /// The signature over the manifest.
    pub const SIGNATURE: std::ops::Range<usize> = 40..104;
    /// The manifest's length.
    pub const MANIFEST_LENGTH: std::ops::Range<usize> = 104..108;
    /// Bytes before the manifest.
    pub const BYTES: usize = 108;

    /// Where the manifest lies in a bundle that starts with `prefix` (at least the
    /// header), or `None` when the prefix is too short to say.
    pub fn manifest(prefix: &[u8]) -> Option<std::ops::Range<usize>> {
        let length: [u8; 4] = prefix.get(MANIFEST_LENGTH)?.try_into().ok()?;
        let length = usize::try_from(u32::from_le_bytes(length)).ok()?;
        Some(BYTES..BYTES + length)
    }
}

/// The format version in [`MAGIC`] and the manifest.
pub const FORMAT: u32 = 1;
/// Prefixed to the manifest before signing, so that a bundle signature can never be
/// replayed as a signature over anything else.
pub const SIGNING_CONTEXT: &[u8] = b"keelson bundle manifest v1\0";
/// The largest manifest a reader accepts.
pub const MAX_MANIFEST_BYTES: u32 = 64 * 1024;
/// The largest kernel or initrd a bundle may carry: both slots' files share the ESP.
pub const MAX_BOOT_FILE_BYTES: u64 = 48 * 1024 * 1024;

/// The artifacts of a bundle, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// The kernel (`vmlinuz`).
    Kernel,
    /// The initramfs.
    Initrd,
    /// The root image followed by its dm-verity hash tree: the slot partition's content.
    Root,
}

impl ArtifactKind {
    /// Every artifact, in the order a bundle carries them.
    pub const ORDER: [ArtifactKind; 3] = [
        ArtifactKind::Kernel,
        ArtifactKind::Initrd,
        ArtifactKind::Root,
    ];

    /// The lower-case name used in manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactKind::Kernel => "kernel",
            ArtifactKind::Initrd => "initrd",
            ArtifactKind::Root => "root",
        }
    }
}

/// One artifact's size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Which artifact.
    pub name: ArtifactKind,
    /// Its exact size in bytes.
    pub size: u64,
    /// Its SHA-256, 64 lower-case hex digits.
    pub sha256: String,
}

/// The dm-verity parameters of the root image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Verity {
    /// The root hash, 64 hex digits.
    pub root_hash: String,
    /// Data blocks (4 KiB) before the hash tree.
    pub data_blocks: u64,
    /// The salt in hex (empty for none).
    pub salt: String,
}

/// What a bundle holds. Signed as its exact JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The OS version the bundle installs (semantic version).
    pub version: String,
    /// The machine architecture it runs on (`x86_64`).
    pub architecture: String,
    /// Kernel arguments that do not depend on the slot (console, panic); the agent adds the
    /// slot and the verity parameters.
    pub cmdline: String,
    /// Kernel, initrd and root, in that order.
    pub artifacts: Vec<Artifact>,
    /// The root image's verity parameters.
    pub verity: Verity,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The stream does not start with the bundle magic.
    #[error("not a Keelson update bundle (it does not start with the bundle magic)")]
    NotABundle,
    /// A bundle of a newer format.
    #[error("bundle format {0} is not understood by this version (format {FORMAT} is)")]
    UnsupportedFormat(u8),
    /// Signed by a key this machine does not trust.
    #[error(
        "the bundle is signed by key {key}, which this machine does not trust (trusted: {trusted}); \
         sign it with a key whose public half is built into the running image"
    )]
    UnknownKey {
        /// The signer's key id.
        key: KeyId,
        /// The ids of the trusted keys.
        trusted: String,
    },
    /// The signature does not match the manifest.
    #[error(
        "the bundle signature does not verify with key {key}: the manifest was altered or \
         signed by another key"
    )]
    BadSignature {
        /// The key id the bundle names.
        key: KeyId,
    },
    /// The manifest is not valid.
    #[error("the bundle manifest is invalid: {0}")]
    Manifest(String),
    /// The stream ended inside an artifact.
    #[error(
        "the bundle is truncated: {artifact} ended after {got} of {expected} bytes; \
         download or upload it again"
    )]
    Truncated {
        /// The artifact that was cut short.
        artifact: &'static str,
        /// Bytes received.
        got: u64,
        /// Bytes the manifest promises.
        expected: u64,
    },
    /// An artifact's content does not match its digest.
    #[error(
        "the bundle is corrupted: {artifact} does not match the SHA-256 in its signed manifest"
    )]
    DigestMismatch {
        /// The artifact whose digest is wrong.
        artifact: &'static str,
    },
    /// Bytes follow the last artifact.
    #[error("the bundle has data after its last artifact")]
    TrailingData,
    /// Reading the stream or writing an artifact failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|error| BundleError::Manifest(error.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks everything a reader relies on.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::Manifest(reason));
        if self.format != FORMAT {
            return bad(format!("format is {}, expected {FORMAT}", self.format));
        }
        if let Err(error) = semver::Version::parse(&self.version) {
            return bad(format!(
                "version `{}` is not a semantic version: {error}",
                self.version
            ));
        }
        if self.architecture.is_empty() {
            return bad("architecture is empty".to_owned());
        }
        let names: Vec<ArtifactKind> = self.artifacts.iter().map(|a| a.name).collect();
        if names != ArtifactKind::ORDER {
            return bad("artifacts must be kernel, initrd and root, in that order".to_owned());
        }
        for artifact in &self.artifacts {
            let limit = match artifact.name {
                ArtifactKind::Kernel | ArtifactKind::Initrd => MAX_BOOT_FILE_BYTES,
                ArtifactKind::Root => keelson_disk::layout::sizes::ROOT_SLOT,
            };
            if artifact.size == 0 || artifact.size > limit {
                return bad(format!(
                    "{} is {} bytes; it must be between 1 and {limit}",
                    artifact.name.name(),
                    artifact.size
                ));
            }
            if !is_hex(&artifact.sha256, 64) {
                return bad(format!(
                    "{}'s sha256 is not 64 hex digits",
                    artifact.name.name()
                ));
            }
        }
        if !is_hex(&self.verity.root_hash, 64) {
            return bad("verity.rootHash is not 64 hex digits".to_owned());
        }
        if self.verity.salt.len() > 512 || !is_hex(&self.verity.salt, self.verity.salt.len()) {
            return bad("verity.salt is not hex (at most 256 bytes)".to_owned());
        }
        let root = self.artifact(ArtifactKind::Root).size;
        let data = self
            .verity
            .data_blocks
            .checked_mul(keelson_disk::verity::BLOCK_SIZE);
        if self.verity.data_blocks == 0 || data.is_none_or(|data| data >= root) {
            return bad(format!(
                "verity.dataBlocks {} does not leave room for a hash tree in a {root}-byte root",
                self.verity.data_blocks
            ));
        }
        if self.cmdline.contains("keelson.slot=") || self.cmdline.contains('\n') {
            return bad("cmdline must not set keelson.slot= or span lines".to_owned());
        }
        Ok(())
    }

    /// The artifact of this kind (validated manifests have all three).
    pub fn artifact(&self, kind: ArtifactKind) -> &Artifact {
        let index = ArtifactKind::ORDER
            .iter()
            .position(|&each| each == kind)
            .unwrap_or(0);
        &self.artifacts[index]
    }

    /// The verity parameters in the form the boot code uses.
    pub fn verity_params(&self) -> keelson_disk::verity::VerityParams {
        let mut root_hash = [0u8; 32];
        if let Some(bytes) = keelson_disk::verity::parse_hex(&self.verity.root_hash) {
            if bytes.len() == 32 {
                root_hash.copy_from_slice(&bytes);
            }
        }
        keelson_disk::verity::VerityParams {
            data_blocks: self.verity.data_blocks,
            salt: keelson_disk::verity::parse_hex(&self.verity.salt).unwrap_or_default(),
            root_hash,
        }
    }
}

fn is_hex(text: &str, length: usize) -> bool {
    text.len() == length && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Writes a bundle: header, signed manifest, then each artifact copied from `artifacts`
/// (kernel, initrd, root) which must match the manifest.
pub fn write_bundle<W: Write>(
    mut out: W,
    key: &SigningKey,
    manifest: &Manifest,
    artifacts: [&mut dyn Read; 3],
) -> Result<(), BundleError> {
    manifest.validate()?;
    let manifest_bytes =
        serde_json::to_vec(manifest).map_err(|error| BundleError::Manifest(error.to_string()))?;
    let length = u32::try_from(manifest_bytes.len())
        .ok()
        .filter(|&length| length <= MAX_MANIFEST_BYTES)
        .ok_or_else(|| BundleError::Manifest("manifest too large".to_owned()))?;
    out.write_all(&MAGIC)?;
    out.write_all(&key.public().id().0)?;
    out.write_all(&key.sign(&signed_message(&manifest_bytes)))?;
    out.write_all(&length.to_le_bytes())?;
    out.write_all(&manifest_bytes)?;
    for (reader, artifact) in artifacts.into_iter().zip(&manifest.artifacts) {
        let digest = copy_hashed(
            reader,
            &mut out,
            artifact.size,
            artifact.name.name(),
            &mut |_| {},
        )?;
        if hex::encode(digest) != artifact.sha256 {
            return Err(BundleError::DigestMismatch {
                artifact: artifact.name.name(),
            });
        }
    }
    out.flush()?;
    Ok(())
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, manifest].concat()
}

/// A SHA-256 hasher for artifact bytes. ring's, not a portable one: an update hashes every
/// byte twice (on the way in and when reading it back), and ring's assembly is several times
/// faster, most of all on CPUs without SHA extensions.
fn artifact_hasher() -> ring::digest::Context {
    ring::digest::Context::new(&ring::digest::SHA256)
}

fn finish_hash(hasher: ring::digest::Context) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hasher.finish().as_ref());
    digest
}

/// The SHA-256 of everything `reader` yields, and its length.
pub fn sha256_of<R: Read>(mut reader: R) -> std::io::Result<(String, u64)> {
    let mut hasher = artifact_hasher();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((hex::encode(finish_hash(hasher)), total))
}

/// Copies exactly `size` bytes from `reader` to `writer`, hashing them; `progress` is
/// called with the bytes copied so far.
fn copy_hashed<R: Read + ?Sized, W: Write + ?Sized>(
    reader: &mut R,
    writer: &mut W,
    size: u64,
    name: &'static str,
    progress: &mut dyn FnMut(u64),
) -> Result<[u8; 32], BundleError> {
    let mut hasher = artifact_hasher();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < size {
        let wanted = buffer.len().min((size - done) as usize);
        let read = match reader.read(&mut buffer[..wanted]) {
            Ok(0) => {
                return Err(BundleError::Truncated {
                    artifact: name,
                    got: done,
                    expected: size,
                })
            }
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        };
        hasher.update(&buffer[..read]);
        writer.write_all(&buffer[..read])?;
        done += read as u64;
        progress(done);
    }
    Ok(finish_hash(hasher))
}

/// Reads a bundle front to back: the header and manifest on [`BundleReader::open`], then
/// each artifact in order through [`BundleReader::copy_next`].
pub struct BundleReader<R> {
    inner: R,
    manifest: Manifest,
    key: KeyId,
    next: usize,
}

impl<R: Read> BundleReader<R> {
    /// Reads the header, checks the signer is trusted and the signature verifies, then
    /// parses the manifest. Nothing of the payload has been read when this returns.
    pub fn open(mut inner: R, trust: &TrustRoot) -> Result<BundleReader<R>, BundleError> {
        let mut magic = [0u8; 8];
        read_header(&mut inner, &mut magic)?;
        if magic[..7] != MAGIC[..7] {
            return Err(BundleError::NotABundle);
        }
        if magic[7] != MAGIC[7] {
            return Err(BundleError::UnsupportedFormat(magic[7]));
        }
        let mut key = [0u8; 32];
        read_header(&mut inner, &mut key)?;
        let key = KeyId(key);
        let mut signature = [0u8; 64];
        read_header(&mut inner, &mut signature)?;
        let mut length = [0u8; 4];
        read_header(&mut inner, &mut length)?;
        let length = u32::from_le_bytes(length);
        if length > MAX_MANIFEST_BYTES {
            return Err(BundleError::Manifest(format!(
                "{length} bytes long, more than the {MAX_MANIFEST_BYTES} allowed"
            )));
        }
        let public = trust.find(&key).ok_or_else(|| BundleError::UnknownKey {
            key,
            trusted: if trust.is_empty() {
                "none".to_owned()
            } else {
                trust.ids().join(", ")
            },
        })?;
        let mut manifest_bytes = vec![0u8; length as usize];
        read_header(&mut inner, &mut manifest_bytes)?;
        if !public.verifies(&signed_message(&manifest_bytes), &signature) {
            return Err(BundleError::BadSignature { key });
        }
        let manifest = Manifest::parse(&manifest_bytes)?;
        Ok(BundleReader {
            inner,
            manifest,
            key,
            next: 0,
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The id of the key that signed the bundle.
    pub fn signer(&self) -> KeyId {
        self.key
    }

    /// The artifact the next [`BundleReader::copy_next`] copies, or `None` after the last.
    pub fn peek(&self) -> Option<&Artifact> {
        self.manifest.artifacts.get(self.next)
    }

    /// Copies the next artifact into `sink`, verifying its size and digest; `progress`
    /// receives the artifact's bytes copied so far. On error the sink holds unverified
    /// bytes and must be discarded.
    pub fn copy_next<W: Write + ?Sized>(
        &mut self,
        sink: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ArtifactKind, BundleError> {
        let artifact = self
            .manifest
            .artifacts
            .get(self.next)
            .cloned()
            .ok_or(BundleError::TrailingData)?;
        let name = artifact.name.name();
        let digest = copy_hashed(&mut self.inner, sink, artifact.size, name, progress)?;
        if hex::encode(digest) != artifact.sha256 {
            return Err(BundleError::DigestMismatch { artifact: name });
        }
        self.next += 1;
        Ok(artifact.name)
    }

    /// Confirms the stream ends after the last artifact.
    pub fn finish(mut self) -> Result<(), BundleError> {
        if self.next < self.manifest.artifacts.len() {
            let artifact = &self.manifest.artifacts[self.next];
            return Err(BundleError::Truncated {
                artifact: artifact.name.name(),
                got: 0,
                expected: artifact.size,
            });
        }
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(BundleError::TrailingData),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

fn read_header<R: Read>(reader: &mut R, buffer: &mut [u8]) -> Result<(), BundleError> {
    reader.read_exact(buffer).map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            BundleError::Truncated {
                artifact: "header",
                got: 0,
                expected: buffer.len() as u64,
            }
        } else {
            error.into()
        }
    })
}

/// Why a valid, trusted bundle is still not installed on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    /// Built for another architecture.
    #[error("the bundle is for {bundle}, this machine is {machine}")]
    WrongArchitecture {
        /// The bundle's architecture.
        bundle: String,
        /// The machine's.
        machine: String,
    },
    /// Older than what runs, without `--allow-downgrade`.
    #[error(
        "the bundle holds {offered}, older than the running {running}; pass --allow-downgrade \
         to install it anyway"
    )]
    Downgrade {
        /// The running version.
        running: String,
        /// The bundle's version.
        offered: String,
    },
}

/// Decides whether `manifest` may replace `running` on a machine of `architecture`.
pub fn check_policy(
    manifest: &Manifest,
    running: &str,
    architecture: &str,
    allow_downgrade: bool,
) -> Result<(), PolicyRefusal> {
    if manifest.architecture != architecture {
        return Err(PolicyRefusal::WrongArchitecture {
            bundle: manifest.architecture.clone(),
            machine: architecture.to_owned(),
        });
    }
    let older = match (
        semver::Version::parse(&manifest.version),
        semver::Version::parse(running),
    ) {
        (Ok(offered), Ok(running)) => offered < running,
        // A running version that is not semantic cannot be compared; let it be replaced.
        _ => false,
    };
    if older && !allow_downgrade {
        return Err(PolicyRefusal::Downgrade {
            running: running.to_owned(),
            offered: manifest.version.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TrustRoot;
    use sha2::{Digest, Sha256};

    pub(crate) fn sample(version: &str) -> (Manifest, [Vec<u8>; 3]) {
        let kernel = b"kernel bytes".to_vec();
        let initrd = b"initrd bytes".to_vec();
        let root = vec![7u8; 3 * 4096];
        let digest = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
        let manifest = Manifest {
            format: FORMAT,
            version: version.to_owned(),
            architecture: "x86_64".to_owned(),
            cmdline: "console=ttyS0,115200 panic=10".to_owned(),
            artifacts: vec![
                Artifact {
                    name: ArtifactKind::Kernel,
                    size: kernel.len() as u64,
                    sha256: digest(&kernel),
                },
                Artifact {
                    name: ArtifactKind::Initrd,
                    size: initrd.len() as u64,
                    sha256: digest(&initrd),
                },
                Artifact {
                    name: ArtifactKind::Root,
                    size: root.len() as u64,
                    sha256: digest(&root),
                },
            ],
            verity: Verity {
                root_hash: "ab".repeat(32),
                data_blocks: 2,
                salt: "00ff".to_owned(),
            },
        };
        (manifest, [kernel, initrd, root])
    }

    fn bundle(key: &SigningKey, version: &str) -> Vec<u8> {
        let (manifest, [kernel, initrd, root]) = sample(version);
        let mut out = Vec::new();
        write_bundle(
            &mut out,
            key,
            &manifest,
            [&mut &kernel[..], &mut &initrd[..], &mut &root[..]],
        )
        .unwrap();
        out
    }

    fn read_all(bytes: &[u8], trust: &TrustRoot) -> Result<Vec<Vec<u8>>, BundleError> {
        let mut reader = BundleReader::open(bytes, trust)?;
        let mut artifacts = Vec::new();
        while reader.peek().is_some() {
            let mut sink = Vec::new();
            reader.copy_next(&mut sink, &mut |_| {})?;
            artifacts.push(sink);
        }
        reader.finish()?;
        Ok(artifacts)
    }

    fn key() -> (SigningKey, TrustRoot) {
        let (key, _) = SigningKey::generate().unwrap();
        let trust = TrustRoot::new(vec![key.public()]);
        (key, trust)
    }

    #[test]
    fn a_signed_bundle_reads_back_whole() {
        let (key, trust) = key();
        let artifacts = read_all(&bundle(&key, "1.2.3"), &trust).unwrap();
        assert_eq!(artifacts, sample("1.2.3").1.to_vec());
    }

    #[test]
    fn rotated_keys_are_all_trusted() {
        let (old, _) = key();
        let (new, _) = key();
        let trust = TrustRoot::new(vec![old.public(), new.public()]);
        read_all(&bundle(&old, "1.0.0"), &trust).unwrap();
        read_all(&bundle(&new, "1.0.0"), &trust).unwrap();
    }

    #[test]
    fn an_unknown_key_is_refused_before_the_manifest_is_read() {
        let (key, _) = key();
        let (_, other_trust) = self::key();
        let error = read_all(&bundle(&key, "1.0.0"), &other_trust).unwrap_err();
        assert!(matches!(error, BundleError::UnknownKey { .. }), "{error}");
        assert!(error.to_string().contains("does not trust"));
    }

    #[test]
    fn an_altered_manifest_fails_the_signature() {
        let (key, trust) = key();
        let mut bytes = bundle(&key, "1.0.0");
        let at = bytes
            .windows(5)
            .position(|window| window == b"1.0.0")
            .unwrap();
        bytes[at] = b'9';
        let error = read_all(&bytes, &trust).unwrap_err();
        assert!(matches!(error, BundleError::BadSignature { .. }), "{error}");
    }

    #[test]
    fn a_corrupted_payload_is_named() {
        let (key, trust) = key();
        let mut bytes = bundle(&key, "1.0.0");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let error = read_all(&bytes, &trust).unwrap_err();
        assert!(
            matches!(error, BundleError::DigestMismatch { artifact: "root" }),
            "{error}"
        );
    }

    #[test]
    fn a_truncated_payload_is_named() {
        let (key, trust) = key();
        let bytes = bundle(&key, "1.0.0");
        let error = read_all(&bytes[..bytes.len() - 100], &trust).unwrap_err();
        assert!(
            matches!(
                error,
                BundleError::Truncated {
                    artifact: "root",
                    ..
                }
            ),
            "{error}"
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            read_all(&longer, &trust).unwrap_err(),
            BundleError::TrailingData
        ));
        assert!(matches!(
            read_all(b"MZ not a bundle", &trust).unwrap_err(),
            BundleError::NotABundle
        ));
    }

    #[test]
    fn policy_refuses_other_architectures_and_downgrades() {
        let (manifest, _) = sample("1.0.0");
        assert!(check_policy(&manifest, "1.0.0", "x86_64", false).is_ok());
        assert!(check_policy(&manifest, "0.9.0", "x86_64", false).is_ok());
        assert!(matches!(
            check_policy(&manifest, "1.1.0", "x86_64", false),
            Err(PolicyRefusal::Downgrade { .. })
        ));
        assert!(check_policy(&manifest, "1.1.0", "x86_64", true).is_ok());
        assert!(matches!(
            check_policy(&manifest, "1.0.0", "aarch64", false),
            Err(PolicyRefusal::WrongArchitecture { .. })
        ));
    }

    #[test]
    fn manifests_that_cannot_be_trusted_are_invalid() {
        let (manifest, _) = sample("1.0.0");
        let mut reordered = manifest.clone();
        reordered.artifacts.swap(0, 1);
        assert!(reordered.validate().is_err());
        let mut huge = manifest.clone();
        huge.artifacts[2].size = u64::MAX;
        assert!(huge.validate().is_err());
        let mut no_tree = manifest.clone();
        no_tree.verity.data_blocks = 3;
        assert!(no_tree.validate().is_err());
        let mut version = manifest;
        version.version = "latest".to_owned();
        assert!(version
            .validate()
            .unwrap_err()
            .to_string()
            .contains("semantic"));
    }
}
