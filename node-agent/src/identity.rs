//! The node's identity before any machine config exists: a machine-id
//! (stable across boots on the same VM or board, via its SMBIOS UUID) and a
//! hostname derived from it.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

pub const PRODUCT_UUID: &str = "/sys/class/dmi/id/product_uuid";

/// 128 bits as 32 lowercase hex digits, the machine-id(5) format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineId(String);

impl MachineId {
    /// Derived from the SMBIOS product UUID, hashed so that the firmware's
    /// UUID itself is not republished through /etc/machine-id. `None` for the
    /// placeholder UUIDs firmware uses when it has none.
    pub fn from_product_uuid(uuid: &str) -> Option<MachineId> {
        let uuid = uuid.trim().to_ascii_lowercase();
        let digits: String = uuid.chars().filter(|c| *c != '-').collect();
        let valid = digits.len() == 32 && digits.chars().all(|c| c.is_ascii_hexdigit());
        let placeholder = digits.chars().all(|c| c == '0') || digits.chars().all(|c| c == 'f');
        if !valid || placeholder {
            return None;
        }
        let digest = Sha256::new()
            .chain_update(b"caisson machine-id\0")
            .chain_update(digits.as_bytes())
            .finalize();
        Some(MachineId::from_bytes(&digest))
    }

    /// Fresh random bits: this machine has no identity of its own, so the
    /// id (and hostname) change at every boot until a config names it.
    pub fn random() -> io::Result<MachineId> {
        let mut bytes = [0u8; 16];
        // /dev/urandom never blocks, even this early in boot.
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(MachineId::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8]) -> MachineId {
        let mut id = [0u8; 16];
        for (dst, src) in id.iter_mut().zip(bytes) {
            *dst = *src;
        }
        MachineId(hex::encode(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the machine-id came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineIdSource {
    ProductUuid,
    Random,
}

/// The machine-id for this boot: from the product UUID when the firmware
/// provides a real one, otherwise random.
pub fn machine_id() -> io::Result<(MachineId, MachineIdSource)> {
    let from_dmi = std::fs::read_to_string(PRODUCT_UUID)
        .ok()
        .and_then(|u| MachineId::from_product_uuid(&u));
    match from_dmi {
        Some(id) => Ok((id, MachineIdSource::ProductUuid)),
        None => MachineId::random().map(|id| (id, MachineIdSource::Random)),
    }
}

/// `caisson-<first 8 hex digits of sha256(machine-id)>`: unique enough on a
/// site, stable for a machine, and reveals nothing of the id.
pub fn default_hostname(id: &MachineId) -> String {
    let digest = Sha256::digest(id.as_str().as_bytes());
    let hex = hex::encode(digest);
    format!("caisson-{}", hex.get(..8).unwrap_or(&hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_from_the_product_uuid_is_stable_and_hides_it() {
        let a = MachineId::from_product_uuid("6F1C9A52-8A3E-4D1B-9F4E-2F0A4B5C6D7E\n").unwrap();
        let b = MachineId::from_product_uuid("6f1c9a52-8a3e-4d1b-9f4e-2f0a4b5c6d7e").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a
            .as_str()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a.as_str(), "6f1c9a528a3e4d1b9f4e2f0a4b5c6d7e");
        let other = MachineId::from_product_uuid("6f1c9a52-8a3e-4d1b-9f4e-2f0a4b5c6d7f").unwrap();
        assert_ne!(a, other);
    }

    #[test]
    fn placeholder_and_malformed_uuids_are_not_identities() {
        assert_eq!(
            MachineId::from_product_uuid("00000000-0000-0000-0000-000000000000"),
            None
        );
        assert_eq!(
            MachineId::from_product_uuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
            None
        );
        assert_eq!(MachineId::from_product_uuid("Not Settable"), None);
        assert_eq!(MachineId::from_product_uuid(""), None);
    }

    #[test]
    fn random_machine_ids_differ() {
        let a = MachineId::random().unwrap();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a, MachineId::random().unwrap());
    }

    #[test]
    fn hostname_is_caisson_and_eight_hex_digits_of_the_ids_hash() {
        let id = MachineId("0123456789abcdef0123456789abcdef".into());
        // sha256("0123456789abcdef0123456789abcdef") = 3eb1bd43…
        assert_eq!(default_hostname(&id), "caisson-3eb1bd43");
    }
}
