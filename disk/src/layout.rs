//! The partition layout of a Keelson disk (see DESIGN.md, "Disk").

use uuid::Uuid;

/// EFI system partition: systemd-boot, loader entries, kernels and initrds.
pub const ESP_LABEL: &str = "KEELSON-ESP";
/// Root slot A: compressed root filesystem followed by its dm-verity hash tree.
pub const ROOT_A_LABEL: &str = "KEELSON-ROOT-A";
/// Root slot B: same as A, empty in a fresh image.
pub const ROOT_B_LABEL: &str = "KEELSON-ROOT-B";
/// Read-write state: mounted at /var, grown to fill the disk on first boot.
pub const STATE_LABEL: &str = "KEELSON-STATE";

/// GPT partition type of an EFI system partition.
pub const ESP_TYPE: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// Discoverable Partitions Specification type of an x86-64 root partition.
pub const ROOT_X86_64_TYPE: Uuid = Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709);
/// Generic Linux filesystem data.
pub const LINUX_DATA_TYPE: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);

/// A root slot: one of the two A/B partitions that hold a verified root image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Slot A (partition 2).
    A,
    /// Slot B (partition 3).
    B,
}

impl Slot {
    /// Both slots, in partition order.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The partition label of this slot's root partition.
    pub fn root_label(self) -> &'static str {
        match self {
            Slot::A => ROOT_A_LABEL,
            Slot::B => ROOT_B_LABEL,
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The lower-case letter used on the kernel command line and in entry names.
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }

    /// Parses `a`/`b` (either case).
    pub fn from_letter(text: &str) -> Option<Slot> {
        match text {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// Default partition sizes of a freshly built image, in bytes.
pub mod sizes {
    const MIB: u64 = 1024 * 1024;
    /// Room for systemd-boot plus a kernel and initrd for each slot, with headroom.
    pub const ESP: u64 = 128 * MIB;
    /// Each root slot; the compressed root plus hash tree must fit.
    pub const ROOT_SLOT: u64 = 256 * MIB;
    /// STATE as built; grown to the end of the disk on first boot.
    pub const STATE: u64 = 64 * MIB;
}
