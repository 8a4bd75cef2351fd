//! The kernel command line: which slot to boot and how to verify it.
//!
//! The boot entry of each slot carries `keelson.slot=<a|b>`, `keelson.roothash=<hex>`,
//! `keelson.verity.blocks=<data blocks>` and `keelson.verity.salt=<hex>`. Parsing is pure.

use keelson_disk::layout::Slot;
use keelson_disk::verity::{parse_hex, VerityParams};

/// What stage 1 needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// The slot the boot loader chose.
    pub slot: Slot,
    /// How to verify that slot's root.
    pub verity: VerityParams,
}

/// Why the command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineError(pub String);

impl std::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The value of `key=` on the command line (the last one wins, as in the kernel).
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| *name == key)
        .map(|(_, value)| value)
        .next_back()
}

/// Parses the slot and verity parameters.
pub fn parse_boot_params(cmdline: &str) -> Result<BootParams, CmdlineError> {
    let missing = |key: &str| {
        CmdlineError(format!(
            "kernel command line has no {key}= (is the boot entry a Keelson one?)"
        ))
    };
    let slot_text = value(cmdline, "keelson.slot").ok_or_else(|| missing("keelson.slot"))?;
    let slot = Slot::from_letter(slot_text)
        .ok_or_else(|| CmdlineError(format!("keelson.slot={slot_text} is not a or b")))?;
    let root_text =
        value(cmdline, "keelson.roothash").ok_or_else(|| missing("keelson.roothash"))?;
    let root_hash: [u8; 32] = parse_hex(root_text)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            CmdlineError(format!("keelson.roothash={root_text} is not 64 hex digits"))
        })?;
    let blocks_text =
        value(cmdline, "keelson.verity.blocks").ok_or_else(|| missing("keelson.verity.blocks"))?;
    let data_blocks = blocks_text
        .parse::<u64>()
        .ok()
        .filter(|&blocks| blocks >= 2)
        .ok_or_else(|| {
            CmdlineError(format!(
                "keelson.verity.blocks={blocks_text} is not a block count"
            ))
        })?;
    let salt_text = value(cmdline, "keelson.verity.salt").unwrap_or("-");
    let salt = if salt_text == "-" {
        Vec::new()
    } else {
        parse_hex(salt_text)
            .ok_or_else(|| CmdlineError(format!("keelson.verity.salt={salt_text} is not hex")))?
    };
    Ok(BootParams {
        slot,
        verity: VerityParams {
            data_blocks,
            salt,
            root_hash,
        },
    })
}

/// The command-line words the image builder puts in a slot's entry.
pub fn boot_args(slot: Slot, verity: &VerityParams) -> String {
    format!(
        "keelson.slot={} keelson.roothash={} keelson.verity.blocks={} keelson.verity.salt={}",
        slot.letter(),
        verity.root_hash_hex(),
        verity.data_blocks,
        if verity.salt.is_empty() {
            "-".to_owned()
        } else {
            keelson_disk::verity::hex(&verity.salt)
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample() -> VerityParams {
        VerityParams {
            data_blocks: 4242,
            salt: vec![1, 2, 3],
            root_hash: [0xcd; 32],
        }
    }

    #[test]
    fn boot_args_parse_back() {
        let line = format!("console=ttyS0 {} quiet", boot_args(Slot::B, &sample()));
        assert_eq!(
            parse_boot_params(&line).unwrap(),
            BootParams {
                slot: Slot::B,
                verity: sample()
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(parse_boot_params("console=ttyS0")
            .unwrap_err()
            .0
            .contains("keelson.slot"));
        let bad_slot = boot_args(Slot::A, &sample()).replace("slot=a", "slot=c");
        assert!(parse_boot_params(&bad_slot)
            .unwrap_err()
            .0
            .contains("keelson.slot=c"));
        let short_hash = boot_args(Slot::A, &sample()).replace(&"cd".repeat(32), "cd");
        assert!(parse_boot_params(&short_hash)
            .unwrap_err()
            .0
            .contains("64 hex digits"));
    }

    #[test]
    fn last_value_wins() {
        assert_eq!(value("a=1 b=2 a=3", "a"), Some("3"));
        assert_eq!(value("a", "a"), None);
    }

    #[test]
    fn arbitrary_command_lines_never_panic() {
        bolero::check!().with_type::<String>().for_each(|line| {
            let _ = parse_boot_params(line);
        });
    }
}
