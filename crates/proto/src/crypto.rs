//! Key derivation and sealing (ChaCha20-Poly1305, HKDF-SHA-256).

use crate::error::ProtoError;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

/// Length of a VM key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a connection salt in bytes.
pub const SALT_LEN: usize = 32;
/// Length of the Poly1305 authentication tag in bytes.
pub const TAG_LEN: usize = 16;

/// A per-connection salt: the primary's random salt (in HELLO) or the appliance's (in its first
/// frame).
pub type Salt = [u8; SALT_LEN];

/// A protected VM's long-term 32-byte key, shared by its primary and the appliance(s).
/// The bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; KEY_LEN]);

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Direction of a frame; part of the key derivation label and of the nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Primary to appliance.
    P2A = 1,
    /// Appliance to primary.
    A2P = 2,
}

/// Derives a 32-byte value from the VM key with HKDF-SHA-256.
fn hkdf(key: &Key, salt: &[u8], info: &[&[u8]]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(salt), &key.0);
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF's 255 * 32 limit: expand cannot fail.
    if hk.expand_multi_info(info, &mut okm).is_err() {
        okm = [0u8; 32];
    }
    okm
}

/// Derives the appliance's connection salt from the VM key, the primary's salt and local
/// material the appliance never repeats (a boot-persistent or monotonic counter, a clock, and any
/// hardware randomness it has, such as RDRAND). See SPEC.md, "Salts and replays".
pub fn derive_appliance_salt(key: &Key, primary_salt: &Salt, local_material: &[u8]) -> Salt {
    hkdf(
        key,
        primary_salt,
        &[b"resilire/1 appliance-salt", local_material],
    )
}

/// A sealing/opening key for one direction of one connection.
pub(crate) struct DirKey {
    aead: ChaCha20Poly1305,
    dir: Dir,
}

impl DirKey {
    /// The key that seals the HELLO frame: bound to the VM key and the primary's salt only.
    pub(crate) fn hello(key: &Key, primary_salt: &Salt) -> DirKey {
        let k = hkdf(key, primary_salt, &[b"resilire/1 hello p2a"]);
        DirKey {
            aead: ChaCha20Poly1305::new(&k.into()),
            dir: Dir::P2A,
        }
    }

    /// The key of one direction of an established connection: bound to both salts.
    pub(crate) fn session(
        key: &Key,
        primary_salt: &Salt,
        appliance_salt: &Salt,
        dir: Dir,
    ) -> DirKey {
        let mut salt = [0u8; 2 * SALT_LEN];
        salt[..SALT_LEN].copy_from_slice(primary_salt);
        salt[SALT_LEN..].copy_from_slice(appliance_salt);
        let label: &[u8] = match dir {
            Dir::P2A => b"resilire/1 session p2a",
            Dir::A2P => b"resilire/1 session a2p",
        };
        let k = hkdf(key, &salt, &[label]);
        DirKey {
            aead: ChaCha20Poly1305::new(&k.into()),
            dir,
        }
    }

    /// The 96-bit nonce: direction byte, three zero bytes, sequence number (big-endian).
    fn nonce(&self, seq: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[0] = self.dir as u8;
        n[4..].copy_from_slice(&seq.to_be_bytes());
        n.into()
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal(
        &self,
        seq: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], ProtoError> {
        let tag = self
            .aead
            .encrypt_in_place_detached(&self.nonce(seq), aad, buf)
            .map_err(|_| ProtoError::FieldTooLong {
                field: "payload",
                len: buf.len(),
                max: crate::MAX_PAYLOAD,
            })?;
        Ok(tag.into())
    }

    /// Authenticates and decrypts `buf` in place.
    pub(crate) fn open(
        &self,
        seq: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), ProtoError> {
        self.aead
            .decrypt_in_place_detached(&self.nonce(seq), aad, buf, Tag::from_slice(tag))
            .map_err(|_| ProtoError::AuthFailed)
    }
}
