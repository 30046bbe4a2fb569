//! Pseudonymous user keys: a keyed BLAKE3 hash of the shop's user id, so raw ids never reach
//! disk or logs. The key is the deployment's secret; without it a key cannot be traced back.

/// A pseudonymised user id (32 hex characters).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct UserKey(String);

impl UserKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a key read back from storage.
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }
}

/// Hashes user ids with the deployment's secret.
#[derive(Clone)]
pub struct UserHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for UserHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserHasher(<secret>)")
    }
}

impl UserHasher {
    /// A hasher keyed by `secret` (any length; it is stretched with BLAKE3's key derivation).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: blake3::derive_key("souk 2026 user-id pseudonymisation v1", secret),
        }
    }

    pub fn key(&self, user_id: &str) -> UserKey {
        let hash = blake3::keyed_hash(&self.key, user_id.as_bytes());
        UserKey(hex::encode(&hash.as_bytes()[..16]))
    }

    /// The key of a fixed id that no shopper has: two hashers agree on it exactly when they
    /// share a secret, and it tells nothing of the secret. A primary sends it to its
    /// replicas, and a store keeps the one its shoppers were filed under.
    pub fn check(&self) -> UserKey {
        self.key(KEY_CHECK_USER)
    }
}

/// The id [`UserHasher::check`] hashes (also on the wire of `Follow`: keep it).
const KEY_CHECK_USER: &str = "souk replica: user-id key check";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_per_secret_and_hide_the_id() {
        let a = UserHasher::new(b"secret-a");
        let b = UserHasher::new(b"secret-b");
        assert_eq!(a.key("alice"), a.key("alice"));
        assert_ne!(a.key("alice"), a.key("bob"));
        assert_ne!(
            a.key("alice"),
            b.key("alice"),
            "another deployment's secret gives other keys"
        );
        assert!(!a.key("alice").as_str().contains("alice"));
        assert_eq!(a.key("alice").as_str().len(), 32);
        assert_eq!(a.check(), UserHasher::new(b"secret-a").check());
        assert_ne!(a.check(), b.check(), "the check tells secrets apart");
    }
}
