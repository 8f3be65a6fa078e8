//! The token in vidgate's own callback URL. Since the Redis failover work it is a payload
//! sealed with XChaCha20-Poly1305 (base64url of nonce ‖ ciphertext): the reservation id and
//! what is needed to charge the task if the store lost the reservation's record (tenant,
//! user, model, quality, audio, billed ms, created ms). The upstream learns nothing from it,
//! and a forged or altered token is refused before anything is read.
//!
//! Tokens minted before (`{reservation_id}.{base64url HMAC-SHA256}`) still verify; they carry
//! only the reservation id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::{ReservationRecord, Store, StoreError};

/// The key's name in the store: one random key shared by every replica (see `Tokens`).
const KEY_NAME: &str = "callback_token_key";
/// Bytes of a fresh key.
const KEY_BYTES: usize = 32;
/// Reservation ids are `rsv_` + a ULID; anything much longer is not ours.
const MAX_ID_LEN: usize = 64;
/// What the sealing key is derived for (HMAC-SHA256 of this under the stored key), so the
/// same stored key never serves two algorithms.
const SEAL_CONTEXT: &[u8] = b"vidgate callback token v2: XChaCha20-Poly1305";
/// The payload's format version, its first byte.
const PAYLOAD_VERSION: u8 = 2;
const NONCE_BYTES: usize = 24;
/// The longest token accepted: a payload of the longest fields (a 255-byte `sub`, a 64-byte
/// tenant id, ...) is far below it.
const MAX_TOKEN_CHARS: usize = 1600;

/// The shared token key: the one in the store, or a fresh random one stored now.
pub async fn load_key(store: &dyn Store) -> Result<Vec<u8>, StoreError> {
    let candidate: [u8; KEY_BYTES] = rand::random();
    store.shared_secret(KEY_NAME, &candidate).await
}

/// What a sealed token carries: enough to charge the task without the store's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPayload {
    pub reservation_id: String,
    pub tenant: String,
    pub user: String,
    pub model: String,
    pub quality: String,
    pub audio: bool,
    pub billed_input_ms: u64,
    pub requested_output_ms: u64,
    pub created_ms: i64,
}

impl TokenPayload {
    pub fn of(record: &ReservationRecord) -> Self {
        Self {
            reservation_id: record.reservation_id.clone(),
            tenant: record.tenant.clone(),
            user: record.user.clone(),
            model: record.model.clone(),
            quality: record.quality.clone(),
            audio: record.audio,
            billed_input_ms: record.billed_input_ms,
            requested_output_ms: record.requested_output_ms,
            created_ms: record.created_ms,
        }
    }

    /// Version, then each string with a 2-byte length, then audio and the numbers (big endian).
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![PAYLOAD_VERSION];
        for text in [
            &self.reservation_id,
            &self.tenant,
            &self.user,
            &self.model,
            &self.quality,
        ] {
            let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
        }
        out.push(u8::from(self.audio));
        out.extend_from_slice(&self.billed_input_ms.to_be_bytes());
        out.extend_from_slice(&self.requested_output_ms.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != PAYLOAD_VERSION {
            return None;
        }
        let mut text = || {
            let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
            let value = String::from_utf8(rest.get(2..2 + len)?.to_vec()).ok()?;
            rest = &rest[2 + len..];
            Some(value)
        };
        let (reservation_id, tenant, user, model, quality) = (text()?, text()?, text()?, text()?, text()?);
        let (&audio, numbers) = rest.split_first()?;
        let number = |i: usize| -> Option<[u8; 8]> { numbers.get(i * 8..i * 8 + 8)?.try_into().ok() };
        if numbers.len() != 24 || audio > 1 {
            return None;
        }
        Some(Self {
            reservation_id,
            tenant,
            user,
            model,
            quality,
            audio: audio == 1,
            billed_input_ms: u64::from_be_bytes(number(0)?),
            requested_output_ms: u64::from_be_bytes(number(1)?),
            created_ms: i64::from_be_bytes(number(2)?),
        })
    }
}

/// A genuine token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Sealed(TokenPayload),
    /// Minted before tokens carried a payload: the reservation id only.
    Legacy(String),
}

impl Verified {
    pub fn reservation_id(&self) -> &str {
        match self {
            Self::Sealed(payload) => &payload.reservation_id,
            Self::Legacy(id) => id,
        }
    }
}

/// Seals and opens tokens.
///
/// The key is random, created by the first replica that starts and kept in the store, so
/// every replica agrees and no operator has to manage it. It is deliberately not derived
/// from `callbacks.signing_secret`: that secret is handed to every team that receives
/// relayed callbacks, and none of them may mint upstream callbacks.
pub struct Tokens {
    key: Vec<u8>,
    seal: XChaCha20Poly1305,
}

impl Tokens {
    pub fn new(key: Vec<u8>) -> Self {
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts any key length");
        derive.update(SEAL_CONTEXT);
        let seal = XChaCha20Poly1305::new(&derive.finalize().into_bytes());
        Self { key, seal }
    }

    /// The sealed token for a reservation (a fresh random nonce each time).
    pub fn seal(&self, payload: &TokenPayload) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        // Invariant: encryption fails only for inputs beyond 256 GiB.
        let sealed = self
            .seal
            .encrypt(XNonce::from_slice(&nonce), payload.encode().as_slice())
            .expect("a payload this small always seals");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The pre-AEAD token `{reservation_id}.{base64url(HMAC-SHA256(key, reservation_id))}`,
    /// still accepted: what an upstream holds for tasks created before the change.
    pub fn legacy(&self, reservation_id: &str) -> String {
        let tag = self.mac(reservation_id).finalize().into_bytes();
        format!("{reservation_id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// What a token stands for, if it is genuine (the tag compared in constant time).
    pub fn verify(&self, token: &str) -> Option<Verified> {
        if token.contains('.') {
            return self.verify_legacy(token).map(Verified::Legacy);
        }
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() <= NONCE_BYTES {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let plain = self.seal.decrypt(XNonce::from_slice(nonce), sealed).ok()?;
        TokenPayload::decode(&plain).map(Verified::Sealed)
    }

    fn verify_legacy(&self, token: &str) -> Option<String> {
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
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(reservation_id.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_token_verifies_to_its_reservation_and_nothing_else_does() {
        let tokens = Tokens::new(vec![7; KEY_BYTES]);
        let token = tokens.legacy("rsv_01JABCDEF");
        let legacy = |id: &str| Some(Verified::Legacy(id.to_string()));
        assert_eq!(tokens.verify(&token), legacy("rsv_01JABCDEF"));
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

    fn payload(user: &str) -> TokenPayload {
        TokenPayload {
            reservation_id: "rsv_01KBZ9X7Y6W5V4T3S2R1Q0P9N8".into(),
            tenant: "t".repeat(64),
            user: user.into(),
            model: "veo-3.1-fast".into(),
            quality: "1080p".into(),
            audio: true,
            billed_input_ms: 4950,
            requested_output_ms: 8000,
            created_ms: 1_795_000_000_123,
        }
    }

    #[test]
    fn a_sealed_token_opens_to_its_payload_and_shows_nothing() {
        let tokens = Tokens::new(vec![7; KEY_BYTES]);
        let payload = payload("ann@example.com");
        let token = tokens.seal(&payload);
        assert_eq!(tokens.verify(&token), Some(Verified::Sealed(payload.clone())));
        assert_ne!(tokens.seal(&payload), token, "a fresh nonce each time");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        for shown in ["ann", "veo", "1080p", "rsv_"] {
            assert!(!token.contains(shown), "{shown} visible in {token}");
        }
        // Any changed character, another key, a cut token: refused.
        for i in [0, 10, token.len() / 2, token.len() - 1] {
            let mut altered = token.clone().into_bytes();
            altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(tokens.verify(&String::from_utf8(altered).unwrap()), None, "byte {i}");
        }
        assert_eq!(Tokens::new(vec![8; KEY_BYTES]).verify(&token), None);
        assert_eq!(tokens.verify(&token[..token.len() - 4]), None);
        assert_eq!(tokens.verify(&"A".repeat(MAX_TOKEN_CHARS + 4)), None);
    }

    #[test]
    fn the_longest_payload_keeps_the_callback_url_within_2048_characters() {
        let tokens = Tokens::new(vec![7; KEY_BYTES]);
        // A 255-byte sub of 4-byte characters is the longest user authentication lets in.
        let user = "😀".repeat(63) + "abc";
        assert_eq!(user.len(), crate::auth::MAX_SUB_BYTES);
        let token = tokens.seal(&TokenPayload {
            model: "m".repeat(128),
            quality: "q".repeat(32),
            ..payload(&user)
        });
        assert!(token.len() <= MAX_TOKEN_CHARS, "{}", token.len());
        let base = "https://".to_string() + &"g".repeat(200);
        let url = format!("{base}/v1/upstream/callbacks/{token}");
        assert!(url.len() <= 2048, "{}", url.len());
        assert!(matches!(tokens.verify(&token), Some(Verified::Sealed(p)) if p.user == user));
    }
}
