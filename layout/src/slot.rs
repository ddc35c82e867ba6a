use std::fmt;
use std::str::FromStr;

use crate::partitions::PartitionRole;

/// One of the two root slots of the A/B scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The name used in boot entries, on the ESP (`/a/`, `/b/`) and on the
    /// kernel command line (`caisson.slot=a`).
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The partition that holds this slot's root.
    pub fn root_partition(self) -> PartitionRole {
        match self {
            Slot::A => PartitionRole::RootA,
            Slot::B => PartitionRole::RootB,
        }
    }

    /// Directory on the ESP holding this slot's kernel and initrd.
    pub fn esp_dir(self) -> &'static str {
        self.name()
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => Err(format!("unknown slot {other:?}: expected \"a\" or \"b\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_pair_up() {
        for slot in [Slot::A, Slot::B] {
            assert_eq!(slot.name().parse::<Slot>().unwrap(), slot);
            assert_eq!(slot.other().other(), slot);
            assert_ne!(slot.other(), slot);
        }
        assert!("c".parse::<Slot>().is_err());
        assert_eq!(Slot::B.root_partition(), PartitionRole::RootB);
    }
}
