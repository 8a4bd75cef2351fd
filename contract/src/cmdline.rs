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

/// The parameters of a command line in order, as the kernel splits them: words separated
/// by white space, where double quotes keep white space inside a word and are removed
/// (`key="a b"` is `key` = `a b`). A word without `=` is a flag with no value.
pub fn parameters(cmdline: &str) -> Vec<(&str, Option<&str>)> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (index, character) in cmdline.char_indices() {
        match character {
            '"' => {
                quoted = !quoted;
                start.get_or_insert(index);
            }
            c if c.is_ascii_whitespace() && !quoted => {
                if let Some(begin) = start.take() {
                    words.push(cmdline.get(begin..index).unwrap_or_default());
                }
            }
            _ => {
                start.get_or_insert(index);
            }
        }
    }
    if let Some(begin) = start {
        words.push(cmdline.get(begin..).unwrap_or_default());
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((name, value)) => (name.trim_matches('"'), Some(strip_quotes(value))),
            None => (word.trim_matches('"'), None),
        })
        .collect()
}

fn strip_quotes(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value)
}

/// The value of `key=` on the command line. A key given more than once takes its last
/// value, as the kernel does; a bare `key` (no `=`) has no value.
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    parameters(cmdline)
        .into_iter()
        .filter(|(name, _)| *name == key)
        .filter_map(|(_, value)| value)
        .next_back()
}

/// True when `key` is on the command line, bare or with a value (`keelson.config.reapply`).
pub fn flag(cmdline: &str, key: &str) -> bool {
    parameters(cmdline).iter().any(|(name, _)| *name == key)
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
        // The agent's `keelson.config=` once took the first value while PID 1 took the
        // last; both read through here now.
        assert_eq!(
            value(
                "keelson.config=http://a/1 keelson.config=http://b/2",
                "keelson.config"
            ),
            Some("http://b/2")
        );
    }

    #[test]
    fn quotes_keep_spaces_and_flags_have_no_value() {
        let line = "console=ttyS0  dyndbg=\"file a.c +p\" keelson.config.reapply quiet";
        assert_eq!(
            parameters(line),
            vec![
                ("console", Some("ttyS0")),
                ("dyndbg", Some("file a.c +p")),
                ("keelson.config.reapply", None),
                ("quiet", None),
            ]
        );
        assert!(flag(line, "keelson.config.reapply"));
        assert!(flag(line, "console"));
        assert!(!flag(line, "keelson.config"));
    }

    #[test]
    fn without_quotes_the_words_are_the_white_space_separated_ones() {
        bolero::check!().with_type::<String>().for_each(|line| {
            if line.contains('"') {
                let _ = parameters(line);
                return;
            }
            let rejoined: Vec<String> = parameters(line)
                .into_iter()
                .map(|(name, value)| match value {
                    Some(value) => format!("{name}={value}"),
                    None => name.to_owned(),
                })
                .collect();
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            assert_eq!(rejoined, words);
        });
    }

    #[test]
    fn arbitrary_command_lines_never_panic() {
        bolero::check!().with_type::<String>().for_each(|line| {
            let _ = parse_boot_params(line);
        });
    }
}
