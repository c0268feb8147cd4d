//! The clear frame header.

use crate::error::ProtoError;
use crate::msg::Kind;
use crate::{MAX_SEALED, TAG_LEN};

/// The four bytes that start every frame.
pub const MAGIC: [u8; 4] = *b"RSLR";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the clear header in bytes.
pub const HEADER_LEN: usize = 32;

/// The clear header of a frame. It travels unencrypted but is authenticated as the AEAD's
/// associated data (together with the clear salt of a connection's first frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message kind.
    pub kind: Kind,
    /// The protected VM this frame belongs to; selects the key.
    pub vm_id: u64,
    /// Sequence number of the frame in its direction, from 0.
    pub seq: u64,
    /// Length of the sealed payload (ciphertext plus tag) that follows the header and, for
    /// sequence number 0, the clear salt.
    pub sealed_len: u32,
}

impl Header {
    /// Serialises the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        // 6..8 flags, 28..32 reserved: zero in version 1.
        b[8..16].copy_from_slice(&self.vm_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.sealed_len.to_le_bytes());
        b
    }

    /// Parses and checks a header: magic, version, kind, reserved bits and the length limits.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, ProtoError> {
        let mut c = crate::wire::Cursor::new(b);
        if c.array::<4>("magic")? != MAGIC {
            return Err(ProtoError::BadMagic);
        }
        let version = c.u8("version")?;
        if version != VERSION {
            return Err(ProtoError::UnsupportedVersion(version));
        }
        let kind_byte = c.u8("kind")?;
        let kind = Kind::from_u8(kind_byte).ok_or(ProtoError::UnknownKind(kind_byte))?;
        let flags = c.u16("flags")?;
        let vm_id = c.u64("vm id")?;
        let seq = c.u64("seq")?;
        let sealed_len = c.u32("length")?;
        let reserved = c.u32("reserved")?;
        if flags != 0 || reserved != 0 {
            return Err(ProtoError::ReservedBitsSet);
        }
        if sealed_len as usize > MAX_SEALED {
            return Err(ProtoError::FrameTooLarge(sealed_len));
        }
        if (sealed_len as usize) < TAG_LEN {
            return Err(ProtoError::FrameTooShort(sealed_len));
        }
        Ok(Header {
            kind,
            vm_id,
            seq,
            sealed_len,
        })
    }
}
