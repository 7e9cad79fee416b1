//! Signed keys of emulated sessions. A session's key is 128 random bits
//! (the number its node files the session under) followed by the node's
//! Ed25519 signature of them; the node publishes its public key in the
//! node registry (`NodeInfo::relay_key`). A node that receives commands
//! for a session of another node checks the key against that node's
//! public key before it relays them: a relay is a message to every node,
//! and a key no node gave is refused at the door, not carried to all of
//! them. Keys of nodes older than this (the 128 bits alone) are taken for
//! a node that publishes no public key, so a cluster can roll onto this
//! version.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::transport::posted::Key;

/// Hex digits of the number: 128 bits.
const NUMBER_DIGITS: usize = 32;
/// Hex digits of the signature: 64 bytes.
const SIGNATURE_DIGITS: usize = 128;

/// Signs this node's session keys.
pub(crate) struct Signer(SigningKey);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Signer").field(&self.public()).finish()
    }
}

impl Signer {
    /// A key pair of its own, for as long as the node runs.
    pub(crate) fn new() -> Self {
        Self(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// The public key, as the node registry carries it.
    pub(crate) fn public(&self) -> String {
        hex::encode(self.0.verifying_key().as_bytes())
    }

    /// The key's text, as the connect reply gives it to the client: the
    /// number and its signature.
    pub(crate) fn text(&self, key: &Key) -> String {
        let number = key.to_string();
        let signature = self.0.sign(number.as_bytes());
        format!("{number}{}", hex::encode(signature.to_bytes()))
    }
}

/// A session key as a client posted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionKey {
    /// The number its node files the session under.
    pub(crate) key: Key,
    number: String,
    /// None for a key of a node older than signed keys.
    signature: Option<[u8; 64]>,
}

impl SessionKey {
    /// The text of a key exactly as a connect reply spells it: the number
    /// in 32 lower-case hex digits, then (from a node that signs) the
    /// signature in 128.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let number = text.get(..NUMBER_DIGITS)?;
        let key = u128::from_str_radix(number, 16).ok().map(Key::from)?;
        let signature = match text.get(NUMBER_DIGITS..)? {
            "" => None,
            signed if signed.len() == SIGNATURE_DIGITS => Some(hex::decode(signed).ok()?.try_into().ok()?),
            _ => return None,
        };
        Some(Self { key, number: number.to_owned(), signature })
    }

    /// Whether the node whose public key is `public` gave this key.
    pub(crate) fn given_by(&self, public: &RelayKey) -> bool {
        match (&public.0, &self.signature) {
            (Some(verifying), Some(signature)) => {
                verifying.verify(self.number.as_bytes(), &Signature::from_bytes(signature)).is_ok()
            }
            _ => false,
        }
    }
}

/// A node's public key as its registry entry publishes it (hex), read
/// once: one that cannot be read verifies no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayKey(Option<VerifyingKey>);

impl RelayKey {
    pub(crate) fn parse(public: &str) -> Self {
        let bytes = hex::decode(public).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        Self(bytes.and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_as_given_by_the_node_that_signed_it_and_no_other() {
        let (ours, theirs) = (Signer::new(), Signer::new());
        let text = ours.text(&Key::from(42));
        assert_eq!(text.len(), NUMBER_DIGITS + SIGNATURE_DIGITS);
        let key = SessionKey::parse(&text).expect("a key as given");
        assert_eq!(key.key, Key::from(42));
        let (ours_public, theirs_public) = (RelayKey::parse(&ours.public()), RelayKey::parse(&theirs.public()));
        assert!(key.given_by(&ours_public));
        assert!(!key.given_by(&theirs_public), "another node's key");
        assert!(!key.given_by(&RelayKey::parse("not a key")), "a key that cannot be read verifies none");

        let mut forged = text.clone();
        forged.replace_range(..NUMBER_DIGITS, &Key::from(43).to_string());
        assert!(!SessionKey::parse(&forged).unwrap().given_by(&ours_public), "another number, the same signature");
        let unsigned = SessionKey::parse(&Key::from(42).to_string()).expect("an older node's key");
        assert!(!unsigned.given_by(&ours_public), "unsigned, for a node that signs");
    }

    #[test]
    fn only_the_spellings_a_connect_reply_gives_are_keys() {
        let signed = Signer::new().text(&Key::from(7));
        for bad in ["", "x", &"1F".repeat(16), &"1f".repeat(17), &signed[..signed.len() - 2], &format!("{signed}00")] {
            assert_eq!(SessionKey::parse(bad), None, "{bad:?}");
        }
        assert!(SessionKey::parse(&signed).is_some());
        assert!(SessionKey::parse(&"1f".repeat(16)).is_some());
    }
}
