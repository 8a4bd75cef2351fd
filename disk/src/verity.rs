//! The dm-verity hash tree (format version 1, SHA-256, 4 KiB blocks).
//!
//! A root slot holds the filesystem image in its first `data_blocks` blocks and the hash
//! tree right after it. The tree is laid out as the kernel's `dm-verity` target expects when
//! given `hash_start_block = data_blocks` and no superblock: the top level (a single block)
//! first, then each lower level, with level 0 (the digests of the data blocks) last. Every
//! digest is `SHA-256(salt ‖ block)`, and each hash block packs 128 digests, zero-padded.
//! The root hash is the digest of the top block; it travels on the kernel command line, so
//! trusting the boot entry is trusting every byte of the root.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Data and hash block size.
pub const BLOCK_SIZE: u64 = 4096;
const DIGEST_SIZE: usize = 32;
const DIGESTS_PER_BLOCK: usize = BLOCK_SIZE as usize / DIGEST_SIZE;

/// Everything the kernel needs to check a root image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Number of 4 KiB data blocks covered by the tree.
    pub data_blocks: u64,
    /// Salt mixed into every digest.
    pub salt: Vec<u8>,
    /// Digest of the top hash block.
    pub root_hash: [u8; DIGEST_SIZE],
}

impl VerityParams {
    /// The block (of the same device) where the hash tree starts: right after the data.
    pub fn hash_start_block(&self) -> u64 {
        self.data_blocks
    }

    /// The `dm-verity` table parameters (after `verity`) for data and hash on one device.
    pub fn table_params(&self, device: &str) -> String {
        format!(
            "1 {device} {device} {block} {block} {blocks} {start} sha256 {root} {salt}",
            block = BLOCK_SIZE,
            blocks = self.data_blocks,
            start = self.hash_start_block(),
            root = hex(&self.root_hash),
            salt = if self.salt.is_empty() {
                "-".to_owned()
            } else {
                hex(&self.salt)
            },
        )
    }

    /// The root hash as lower-case hex.
    pub fn root_hash_hex(&self) -> String {
        hex(&self.root_hash)
    }
}

/// Number of hash blocks the tree for `data_blocks` blocks occupies.
pub fn tree_blocks(data_blocks: u64) -> u64 {
    let mut total = 0;
    let mut level = data_blocks;
    loop {
        level = level.div_ceil(DIGESTS_PER_BLOCK as u64);
        total += level;
        if level <= 1 {
            return total;
        }
    }
}

/// Reads `data_blocks` blocks from `data`, writes their hash tree to `tree`, and returns
/// the parameters. The whole of level 0 is held in memory (32 bytes per data block: 8 MiB
/// for a 1 GiB root), which keeps the format's top-down ordering simple to produce.
pub fn build_hash_tree<R: Read, W: Write>(
    mut data: R,
    data_blocks: u64,
    salt: &[u8],
    mut tree: W,
) -> io::Result<VerityParams> {
    if data_blocks < 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a verity image needs at least two data blocks",
        ));
    }
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut digests = Vec::with_capacity(data_blocks as usize * DIGEST_SIZE);
    for _ in 0..data_blocks {
        data.read_exact(&mut block)?;
        digests.extend_from_slice(&salted_digest(salt, &block));
    }

    // levels[0] is level 0 (closest to the data); the last one is the single top block.
    let mut levels = vec![pack_into_blocks(&digests)];
    while levels[levels.len() - 1].len() > BLOCK_SIZE as usize {
        let below = &levels[levels.len() - 1];
        let mut above = Vec::new();
        for hash_block in below.chunks_exact(BLOCK_SIZE as usize) {
            above.extend_from_slice(&salted_digest(salt, hash_block));
        }
        levels.push(pack_into_blocks(&above));
    }
    let root_hash = salted_digest(salt, &levels[levels.len() - 1]);
    for level in levels.iter().rev() {
        tree.write_all(level)?;
    }
    tree.flush()?;
    Ok(VerityParams {
        data_blocks,
        salt: salt.to_vec(),
        root_hash,
    })
}

fn salted_digest(salt: &[u8], block: &[u8]) -> [u8; DIGEST_SIZE] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(block);
    hasher.finalize().into()
}

fn pack_into_blocks(digests: &[u8]) -> Vec<u8> {
    let blocks = digests.len().div_ceil(BLOCK_SIZE as usize).max(1);
    let mut packed = digests.to_vec();
    packed.resize(blocks * BLOCK_SIZE as usize, 0);
    packed
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Parses lower- or upper-case hex; `None` on odd length or a non-hex character.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            text.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample_data(blocks: u64) -> Vec<u8> {
        (0..blocks * BLOCK_SIZE)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    #[test]
    fn tree_size_matches_what_is_written() {
        for blocks in [2, 127, 128, 129, 128 * 128, 128 * 128 + 1] {
            let mut tree = Vec::new();
            build_hash_tree(&sample_data(blocks)[..], blocks, b"salt", &mut tree).unwrap();
            assert_eq!(
                tree.len() as u64,
                tree_blocks(blocks) * BLOCK_SIZE,
                "{blocks} blocks"
            );
        }
    }

    #[test]
    fn changing_one_data_byte_changes_the_root_hash() {
        let mut data = sample_data(300);
        let original = build_hash_tree(&data[..], 300, b"s", io::sink()).unwrap();
        data[4096 * 299 + 17] ^= 0x80;
        let changed = build_hash_tree(&data[..], 300, b"s", io::sink()).unwrap();
        assert_ne!(original.root_hash, changed.root_hash);
    }

    #[test]
    fn table_names_the_device_twice_and_starts_hashes_after_the_data() {
        let params = VerityParams {
            data_blocks: 10,
            salt: vec![0xab],
            root_hash: [0; 32],
        };
        assert_eq!(
            params.table_params("259:2"),
            format!("1 259:2 259:2 4096 4096 10 10 sha256 {} ab", "0".repeat(64))
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(parse_hex(&hex(&[0, 1, 0xfe])).unwrap(), vec![0, 1, 0xfe]);
        assert_eq!(parse_hex("abc"), None);
        assert_eq!(parse_hex("zz"), None);
    }

    /// The tree must be byte-for-byte what cryptsetup's `veritysetup` writes, since the
    /// kernel reads it the same way. Runs where veritysetup is installed (CI installs it).
    #[test]
    fn matches_veritysetup() {
        let Ok(output) = Command::new("veritysetup").arg("--version").output() else {
            keelson_testkit::skip(
                "matches_veritysetup",
                "veritysetup is not installed (apt-get install cryptsetup-bin)",
            );
            return;
        };
        assert!(output.status.success());
        let dir = tempfile::tempdir().unwrap();
        for blocks in [3u64, 129, 20_000] {
            let data_path = dir.path().join("data");
            let hash_path = dir.path().join("hash");
            std::fs::write(&data_path, sample_data(blocks)).unwrap();
            std::fs::write(&hash_path, []).unwrap();
            let salt = [0x5a; 32];
            let output = Command::new("veritysetup")
                .args(["format", "--no-superblock", "--hash=sha256"])
                .arg(format!("--salt={}", hex(&salt)))
                .arg(&data_path)
                .arg(&hash_path)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            let expected_root = stdout
                .lines()
                .find_map(|line| line.strip_prefix("Root hash:"))
                .unwrap()
                .trim()
                .to_owned();
            let mut tree = Vec::new();
            let params = build_hash_tree(
                &std::fs::read(&data_path).unwrap()[..],
                blocks,
                &salt,
                &mut tree,
            )
            .unwrap();
            assert_eq!(params.root_hash_hex(), expected_root, "{blocks} blocks");
            assert_eq!(tree, std::fs::read(&hash_path).unwrap(), "{blocks} blocks");
        }
    }
}
