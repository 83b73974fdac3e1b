//! `export.redact_peer_addresses`: peer addresses leave the agent as keyed hashes.
//!
//! The hash is HMAC-SHA-256 over the address's bytes (an IPv4-mapped IPv6 address is already
//! folded to IPv4 by the sampler), keyed by `export.redact_key` and cut to 64 bits:
//! `hmac:3f2a9c0d41b7e855`. The same peer gets the same value on every host that shares the
//! key, so flows still join across hosts and over time, while a reader without the key cannot
//! test a guess. Only peer addresses are redacted: the local address is the host's own, and
//! resource names (subnet, VPC, service) come from the operator's configuration.
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A key shorter than this is refused: it could be guessed.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedactError {
    #[error(
        "export.redact_peer_addresses is on but export.redact_key is not set; set it (or FLOWTEL_EXPORT__REDACT_KEY) to a secret of at least {MIN_KEY_LEN} characters shared by the hosts whose flows should join"
    )]
    NoKey,
    #[error("export.redact_key is {len} characters; use at least {MIN_KEY_LEN}")]
    ShortKey { len: usize },
}

/// How peer addresses appear in exported attributes and labels.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum PeerAddresses {
    #[default]
    Plain,
    /// HMAC-SHA-256 keyed by the digest of the configured key.
    Hashed([u8; 32]),
}

// never print the key, not even in a debug dump of the configuration
impl std::fmt::Debug for PeerAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            Self::Hashed(_) => f.write_str("Hashed(<key redacted>)"),
        }
    }
}

impl PeerAddresses {
    pub fn new(redact: bool, key: Option<&str>) -> Result<Self, RedactError> {
        if !redact {
            return Ok(Self::Plain);
        }
        let key = key.filter(|k| !k.is_empty()).ok_or(RedactError::NoKey)?;
        let len = key.chars().count();
        if len < MIN_KEY_LEN {
            return Err(RedactError::ShortKey { len });
        }
        Ok(Self::Hashed(Sha256::digest(key.as_bytes()).into()))
    }

    /// The value exported for a peer's DNS name: redacted with the addresses, since a name
    /// gives the address away. Hashed apart from addresses (a prefix no address has).
    pub fn show_name(&self, name: &str) -> String {
        let Self::Hashed(key) = self else {
            return name.to_string();
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return "hmac:invalid-key".into();
        };
        mac.update(b"dns:");
        mac.update(name.as_bytes());
        hex_tag(&mac.finalize().into_bytes())
    }

    /// The value exported for `address`.
    pub fn show(&self, address: IpAddr) -> String {
        let Self::Hashed(key) = self else {
            return address.to_string();
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            // HMAC takes keys of any length: unreachable, but never export the address plainly
            return "hmac:invalid-key".into();
        };
        match address {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        hex_tag(&mac.finalize().into_bytes())
    }
}

/// `hmac:` and the digest's first 64 bits in hex.
fn hex_tag(digest: &[u8]) -> String {
    let mut out = String::with_capacity(21);
    out.push_str("hmac:");
    for byte in &digest[..8] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "correct horse battery staple";

    #[test]
    fn a_dns_name_is_redacted_with_the_addresses_and_never_collides_with_one() {
        let redact = PeerAddresses::new(true, Some(KEY)).expect("key");
        assert_eq!(PeerAddresses::Plain.show_name("api.example.com"), "api.example.com");
        let shown = redact.show_name("api.example.com");
        assert!(shown.starts_with("hmac:") && shown.len() == 21, "{shown}");
        assert!(!shown.contains("example"));
        assert_eq!(shown, redact.show_name("api.example.com"), "stable");
        assert_ne!(shown, redact.show_name("www.example.com"));
        // four name bytes that spell an address hash apart from it
        let bytes = [10u8, 1, 2, 3];
        let as_name = std::str::from_utf8(&bytes).expect("ascii");
        assert_ne!(
            redact.show_name(as_name),
            redact.show("10.1.2.3".parse().expect("address"))
        );
    }

    #[test]
    fn plain_by_default() {
        let peer: IpAddr = "10.1.2.3".parse().expect("address");
        assert_eq!(PeerAddresses::default().show(peer), "10.1.2.3");
        assert_eq!(PeerAddresses::new(false, Some(KEY)), Ok(PeerAddresses::Plain));
    }

    #[test]
    fn hashes_are_stable_per_key_distinct_per_address_and_hide_the_address() {
        let a: IpAddr = "10.1.2.3".parse().expect("address");
        let b: IpAddr = "10.1.2.4".parse().expect("address");
        let redact = PeerAddresses::new(true, Some(KEY)).expect("key");
        let other = PeerAddresses::new(true, Some("another key of enough length")).expect("key");
        let shown = redact.show(a);
        assert!(shown.starts_with("hmac:") && shown.len() == 21, "{shown}");
        assert!(!shown.contains("10.1.2.3"));
        assert_eq!(shown, redact.show(a), "stable");
        assert_ne!(shown, redact.show(b), "distinct addresses stay distinct");
        assert_ne!(shown, other.show(a), "keyed: another key, another value");
        // the RFC 4231-style construction, checked against an independent computation
        let mut mac = Hmac::<Sha256>::new_from_slice(&Sha256::digest(KEY.as_bytes())).expect("key");
        mac.update(&[10, 1, 2, 3]);
        let expected: String = mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(shown, format!("hmac:{expected}"));
    }

    #[test]
    fn a_missing_or_short_key_is_refused_and_the_key_never_prints() {
        assert_eq!(PeerAddresses::new(true, None), Err(RedactError::NoKey));
        assert_eq!(PeerAddresses::new(true, Some("")), Err(RedactError::NoKey));
        assert_eq!(
            PeerAddresses::new(true, Some("short")),
            Err(RedactError::ShortKey { len: 5 })
        );
        let redact = PeerAddresses::new(true, Some(KEY)).expect("key");
        assert!(!format!("{redact:?}").contains("horse"));
    }
}
