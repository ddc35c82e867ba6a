use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A GUID derived from the image identity and a purpose string, so the same
/// inputs always give the same disk. The variant and version bits are set as
/// for an RFC 9562 version 8 (custom) UUID.
pub fn derive_guid(identity: &str, purpose: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"caisson-guid\0");
    h.update(identity.as_bytes());
    h.update(b"\0");
    h.update(purpose.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_guid_is_stable_and_well_formed() {
        let g = derive_guid("caisson-0.1.0", "disk");
        assert_eq!(g, derive_guid("caisson-0.1.0", "disk"));
        assert_ne!(g, derive_guid("caisson-0.1.0", "partition/ESP"));
        assert_eq!(g.get_version_num(), 8);
        assert_eq!(g.get_variant(), uuid::Variant::RFC4122);
    }
}
