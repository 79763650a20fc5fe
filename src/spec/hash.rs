//! The config hash: SHA-256 (hex) of a canonical form, the name of a config everywhere: on disk
//! (a directory of the store), in the supervisor's protocol, in events and metrics.
//!
//! A [`ConfigHash`] can only hold 64 lower-case hex digits: it is parsed once where a hash comes
//! in (a protocol message, a file, a symlink), so a hash that names a path outside the store, or
//! a label that is not a hash, cannot reach the code that uses it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// A config hash: 64 lower-case hex digits, checked when made.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigHash(String);

/// Why a text is not a config hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAHash(pub String);

impl fmt::Display for NotAHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a config hash (64 lower-case hex digits)",
            self.0
        )
    }
}

impl std::error::Error for NotAHash {}

impl ConfigHash {
    /// The hash a finished SHA-256 gives.
    pub fn of(h: Sha256) -> ConfigHash {
        ConfigHash(hex::encode(h.finalize()))
    }

    /// The hash of some bytes (a refused body, which has no canonical form).
    pub fn of_bytes(bytes: &[u8]) -> ConfigHash {
        ConfigHash(hex::encode(Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits: enough to tell configs apart in a log line or a message.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<String> for ConfigHash {
    type Error = NotAHash;

    fn try_from(s: String) -> Result<ConfigHash, NotAHash> {
        let valid = s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(ConfigHash(s))
        } else {
            Err(NotAHash(s))
        }
    }
}

impl std::str::FromStr for ConfigHash {
    type Err = NotAHash;

    fn from_str(s: &str) -> Result<ConfigHash, NotAHash> {
        ConfigHash::try_from(s.to_owned())
    }
}

impl From<ConfigHash> for String {
    fn from(h: ConfigHash) -> String {
        h.0
    }
}

impl fmt::Display for ConfigHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConfigHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_lower_case_hex_digits_make_a_hash() {
        let good = "a".repeat(63) + "0";
        assert_eq!(good.parse::<ConfigHash>().unwrap().as_str(), good);
        for bad in [
            String::new(),
            "a".repeat(63),
            "a".repeat(65),
            "A".repeat(64),
            "g".repeat(64),
            "../".to_string() + &"a".repeat(61),
            "a".repeat(63) + "/",
        ] {
            let e = bad.parse::<ConfigHash>().unwrap_err();
            assert!(e.to_string().contains("not a config hash"), "{e}");
        }
    }

    #[test]
    fn a_bad_hash_is_refused_when_read_from_json() {
        let good = format!("\"{}\"", "0".repeat(64));
        let h: ConfigHash = serde_json::from_str(&good).unwrap();
        assert_eq!(serde_json::to_string(&h).unwrap(), good);
        let e = serde_json::from_str::<ConfigHash>("\"../etc\"").unwrap_err();
        assert!(e.to_string().contains("not a config hash"), "{e}");
    }

    #[test]
    fn a_hash_of_bytes_is_sha256_hex() {
        let h = ConfigHash::of_bytes(b"abc");
        assert_eq!(
            h.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.short(), "ba7816bf8f01");
        assert_eq!(format!("{h}"), h.as_str());
    }
}
