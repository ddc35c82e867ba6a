//! Ed25519 keys in the files OpenSSL reads (`openssl pkey`): the secret
//! key as PKCS#8 PEM, the public key as SPKI PEM. A key is named by its key
//! id, the first 16 hex digits of the sha256 of its 32 raw public bytes.

use std::fmt;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, SECRET_KEY_LENGTH};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::error::BundleError;
use crate::manifest::is_lower_hex;

/// Hex digits in a key id.
pub const KEY_ID_LEN: usize = 16;
/// Hex digits in a signature (64 bytes).
const SIGNATURE_HEX_LEN: usize = 128;

/// The secret half: it signs manifests. `Debug` shows only the key id.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<SigningKey, BundleError> {
        let mut seed = Zeroizing::new([0u8; SECRET_KEY_LENGTH]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| BundleError::Random(e.to_string()))?;
        Ok(SigningKey::from_seed(&seed))
    }

    /// The key whose 32-byte Ed25519 seed this is (RFC 8032's secret key).
    pub fn from_seed(seed: &[u8; SECRET_KEY_LENGTH]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// A PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(text: &str) -> Result<SigningKey, BundleError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(text.trim())
            .map(SigningKey)
            .map_err(|e| BundleError::Key {
                what: "signing key",
                reason: format!(
                    "not a PKCS#8 PEM Ed25519 private key (-----BEGIN PRIVATE KEY-----): {e}"
                ),
            })
    }

    /// PKCS#8 v1 PEM, as `openssl genpkey -algorithm ed25519` writes it.
    pub fn to_pem(&self) -> Zeroizing<String> {
        // v1 (no public key inside): the form every OpenSSL version reads.
        let pair = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        // Encoding 32 bytes into a fixed DER structure cannot fail.
        pair.to_pkcs8_pem(LineEnding::LF).unwrap_or_default()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The detached signature of `message`, for the signature block.
    pub fn sign(&self, message: &[u8]) -> SignatureEntry {
        SignatureEntry {
            key_id: self.public().key_id(),
            signature: hex::encode(self.0.sign(message).to_bytes()),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public().key_id())
    }
}

/// The public half: a node trusts bundles signed by the keys it lists.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// An SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str) -> Result<PublicKey, BundleError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(text.trim())
            .map(PublicKey)
            .map_err(|e| BundleError::Key {
                what: "public key",
                reason: format!(
                    "not an SPKI PEM Ed25519 public key (-----BEGIN PUBLIC KEY-----): {e}"
                ),
            })
    }

    pub fn to_pem(&self) -> String {
        // Encoding 32 bytes into a fixed DER structure cannot fail.
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// The raw 32-byte key, as RFC 8032 encodes it.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// First 16 hex digits of sha256 of the raw key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..KEY_ID_LEN / 2])
    }

    /// Strict RFC 8032 verification (no malleable or small-order forms).
    pub fn verifies(&self, message: &[u8], entry: &SignatureEntry) -> bool {
        let Ok(bytes) = hex::decode(&entry.signature) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

/// What a node accepts: bundles signed by one of `trusted`, and unsigned
/// ones too when `allow_unsigned` is set (for labs; off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    pub trusted: Vec<PublicKey>,
    pub allow_unsigned: bool,
}

/// What [`crate::BundleReader::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key id of the first trusted key whose signature verified; None
    /// when the bundle was accepted because the policy allows unsigned ones.
    pub signed_by: Option<String>,
    /// Key ids of signatures by keys the policy does not list: not checked,
    /// and accepted only where an unsigned bundle would be.
    pub ignored: Vec<String>,
}

/// One signature: by which key, over the manifest bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub key_id: String,
    /// 64 bytes, 128 lower-case hex digits.
    pub signature: String,
}

/// The signature block's JSON: `{"signatures":[...]}`; empty = unsigned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    pub signatures: Vec<SignatureEntry>,
}

impl SignatureBlock {
    pub(crate) fn validate(&self) -> Result<(), BundleError> {
        for (i, s) in self.signatures.iter().enumerate() {
            if !is_lower_hex(&s.key_id, KEY_ID_LEN) {
                return Err(BundleError::InvalidSignatures {
                    field: format!("signatures[{i}].key_id"),
                    reason: format!("{:?} is not {KEY_ID_LEN} lower-case hex digits", s.key_id),
                });
            }
            if !is_lower_hex(&s.signature, SIGNATURE_HEX_LEN) {
                return Err(BundleError::InvalidSignatures {
                    field: format!("signatures[{i}].signature"),
                    reason: format!("not {SIGNATURE_HEX_LEN} lower-case hex digits"),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Strings in a struct always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The policy applied to one manifest's signatures.
///
/// - A signature by a trusted key must verify, even if another trusted
///   signature does: a bad one means the manifest or the block was altered,
///   and a node refuses a bundle that shows signs of tampering.
/// - Signatures by keys the policy does not list are not checked (nothing
///   to check them with). They do not make a bundle acceptable; they do not
///   make it worse than an unsigned one either.
/// - Accepted: at least one good trusted signature, or none at all and
///   `allow_unsigned`.
pub(crate) fn check(
    policy: &TrustPolicy,
    manifest: &[u8],
    block: &SignatureBlock,
) -> Result<Verified, BundleError> {
    let mut signed_by = None;
    let mut ignored = Vec::new();
    for entry in &block.signatures {
        let candidates: Vec<&PublicKey> = policy
            .trusted
            .iter()
            .filter(|k| k.key_id() == entry.key_id)
            .collect();
        if candidates.is_empty() {
            ignored.push(entry.key_id.clone());
            continue;
        }
        // Key ids are 64 bits: two trusted keys may share one, in theory.
        if !candidates.iter().any(|k| k.verifies(manifest, entry)) {
            return Err(BundleError::BadSignature {
                key_id: entry.key_id.clone(),
            });
        }
        signed_by.get_or_insert_with(|| entry.key_id.clone());
    }
    match (signed_by, policy.allow_unsigned) {
        (Some(key_id), _) => Ok(Verified {
            signed_by: Some(key_id),
            ignored,
        }),
        (None, true) => Ok(Verified {
            signed_by: None,
            ignored,
        }),
        (None, false) if ignored.is_empty() => Err(BundleError::Unsigned),
        (None, false) => Err(BundleError::UntrustedSigner { key_ids: ignored }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    fn policy(keys: &[&SigningKey], allow_unsigned: bool) -> TrustPolicy {
        TrustPolicy {
            trusted: keys.iter().map(|k| k.public()).collect(),
            allow_unsigned,
        }
    }

    fn block(entries: Vec<SignatureEntry>) -> SignatureBlock {
        SignatureBlock {
            signatures: entries,
        }
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1: empty message.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let k = SigningKey::from_seed(&seed.try_into().unwrap());
        assert_eq!(
            hex::encode(k.public().as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            k.sign(b"").signature,
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn pem_round_trips_and_key_id_is_sha256_prefix() {
        let k = key(7);
        let again = SigningKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(again.public(), k.public());
        assert!(k.to_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let p = PublicKey::from_pem(&k.public().to_pem()).unwrap();
        assert_eq!(p, k.public());
        assert!(p.to_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let id = p.key_id();
        assert_eq!(id, hex::encode(Sha256::digest(p.as_bytes()))[..16]);
        assert_eq!(
            format!("{k:?}"),
            format!("SigningKey({id})"),
            "Debug must not show the secret"
        );
    }

    #[test]
    fn pem_of_the_wrong_kind_is_refused() {
        let e = SigningKey::from_pem(&key(1).public().to_pem()).unwrap_err();
        assert!(
            e.to_string().starts_with("signing key: not a PKCS#8"),
            "{e}"
        );
        let e = PublicKey::from_pem("hello").unwrap_err();
        assert!(e.to_string().starts_with("public key: not an SPKI"), "{e}");
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            SigningKey::generate().unwrap().public(),
            SigningKey::generate().unwrap().public()
        );
    }

    #[test]
    fn a_trusted_signature_is_accepted() {
        let (a, b) = (key(1), key(2));
        let v = check(
            &policy(&[&a], false),
            b"m",
            &block(vec![b.sign(b"m"), a.sign(b"m")]),
        )
        .unwrap();
        assert_eq!(v.signed_by, Some(a.public().key_id()));
        assert_eq!(v.ignored, [b.public().key_id()]);
    }

    #[test]
    fn a_bad_trusted_signature_is_refused_even_beside_a_good_one() {
        let (a, b) = (key(1), key(2));
        let mut bad = b.sign(b"m");
        bad.signature.replace_range(
            0..2,
            if &bad.signature[0..2] == "00" {
                "01"
            } else {
                "00"
            },
        );
        let e = check(
            &policy(&[&a, &b], false),
            b"m",
            &block(vec![a.sign(b"m"), bad]),
        )
        .unwrap_err();
        assert!(
            matches!(e, BundleError::BadSignature { ref key_id } if *key_id == b.public().key_id()),
            "{e}"
        );
    }

    #[test]
    fn untrusted_and_unsigned_follow_allow_unsigned() {
        let (a, b) = (key(1), key(2));
        let by_b = block(vec![b.sign(b"m")]);
        let e = check(&policy(&[&a], false), b"m", &by_b).unwrap_err();
        assert!(matches!(e, BundleError::UntrustedSigner { .. }), "{e}");
        assert!(e.to_string().contains(&b.public().key_id()), "{e}");
        let e = check(&policy(&[&a], false), b"m", &block(vec![])).unwrap_err();
        assert!(matches!(e, BundleError::Unsigned), "{e}");
        let v = check(&policy(&[&a], true), b"m", &by_b).unwrap();
        assert_eq!(v.signed_by, None);
        let v = check(&policy(&[], true), b"m", &block(vec![])).unwrap();
        assert_eq!(
            v,
            Verified {
                signed_by: None,
                ignored: vec![]
            }
        );
    }

    #[test]
    fn block_fields_are_checked() {
        let mut entry = key(1).sign(b"m");
        entry.key_id.make_ascii_uppercase();
        entry.key_id.replace_range(0..1, "G");
        let e = block(vec![entry]).validate().unwrap_err();
        assert!(e.to_string().contains("signatures[0].key_id"), "{e}");
        let mut entry = key(1).sign(b"m");
        entry.signature.pop();
        let e = block(vec![entry]).validate().unwrap_err();
        assert!(e.to_string().contains("signatures[0].signature"), "{e}");
    }
}
