//! The token in vidgate's own callback URL: the reservation id and an HMAC of it, so that a
//! callback finds its reservation and a forged one is refused before anything is read.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::{Store, StoreError};

/// The key's name in the store: one random key shared by every replica (see `Tokens`).
const KEY_NAME: &str = "callback_token_key";
/// Bytes of a fresh key.
const KEY_BYTES: usize = 32;
/// Reservation ids are `rsv_` + a ULID; anything much longer is not ours.
const MAX_ID_LEN: usize = 64;

/// The shared token key: the one in the store, or a fresh random one stored now.
pub async fn load_key(store: &dyn Store) -> Result<Vec<u8>, StoreError> {
    let candidate: [u8; KEY_BYTES] = rand::random();
    store.shared_secret(KEY_NAME, &candidate).await
}

/// Makes and checks tokens `{reservation_id}.{base64url(HMAC-SHA256(key, reservation_id))}`.
///
/// The key is random, created by the first replica that starts and kept in the store, so
/// every replica agrees and no operator has to manage it. It is deliberately not derived
/// from `callbacks.signing_secret`: that secret is handed to every team that receives
/// relayed callbacks, and none of them may mint upstream callbacks.
pub struct Tokens {
    key: Vec<u8>,
}

impl Tokens {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    pub fn token(&self, reservation_id: &str) -> String {
        let tag = self.mac(reservation_id).finalize().into_bytes();
        format!("{reservation_id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The reservation id a token stands for, if the token is genuine (compared in constant
    /// time).
    pub fn verify(&self, token: &str) -> Option<String> {
        let (reservation_id, tag) = token.rsplit_once('.')?;
        let plausible = !reservation_id.is_empty()
            && reservation_id.len() <= MAX_ID_LEN
            && reservation_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !plausible {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(reservation_id)
            .verify_slice(&tag)
            .ok()
            .map(|()| reservation_id.to_string())
    }

    fn mac(&self, reservation_id: &str) -> Hmac<Sha256> {
        // Invariant: HMAC takes keys of any length, so this never fails.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(reservation_id.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_to_its_reservation_and_nothing_else_does() {
        let tokens = Tokens::new(vec![7; KEY_BYTES]);
        let token = tokens.token("rsv_01JABCDEF");
        assert_eq!(tokens.verify(&token).as_deref(), Some("rsv_01JABCDEF"));
        let (id, tag) = token.split_once('.').unwrap();
        // Another reservation's id with this tag, a changed tag, another key: all refused.
        assert_eq!(tokens.verify(&format!("rsv_01JABCDEG.{tag}")), None);
        let mut flipped = tag.to_string();
        flipped.replace_range(0..1, if tag.starts_with('A') { "B" } else { "A" });
        assert_eq!(tokens.verify(&format!("{id}.{flipped}")), None);
        assert_eq!(Tokens::new(vec![8; KEY_BYTES]).verify(&token), None);
        for junk in [
            "",
            ".",
            "rsv_1",
            "rsv_1.",
            ".abc",
            "rsv/1.abc",
            "rsv_1.!!!",
            &"a".repeat(300),
        ] {
            assert_eq!(tokens.verify(junk), None, "{junk}");
        }
    }
}
