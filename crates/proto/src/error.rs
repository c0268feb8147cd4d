//! Protocol errors.

use core::fmt;

/// Everything that can go wrong with a frame or a session. Every variant means "close this
/// connection"; the variants only say why, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// The first four bytes of a frame are not [`crate::MAGIC`].
    BadMagic,
    /// The frame's protocol version is not one this crate speaks.
    UnsupportedVersion(u8),
    /// The frame's kind byte is not a known message kind.
    UnknownKind(u8),
    /// Flags or reserved header bytes are not zero.
    ReservedBitsSet,
    /// The sealed length in the header exceeds [`crate::MAX_SEALED`].
    FrameTooLarge(u32),
    /// The sealed length in the header is shorter than the authentication tag.
    FrameTooShort(u32),
    /// The stream ended inside a frame.
    Truncated,
    /// No key is known for this VM id.
    UnknownVm(u64),
    /// The frame names another VM than the one this connection is bound to.
    VmMismatch {
        /// The VM this connection serves.
        expected: u64,
        /// The VM the frame names.
        got: u64,
    },
    /// The sequence number is not the next one: a replayed, reordered or dropped frame.
    BadSequence {
        /// The sequence number that was due.
        expected: u64,
        /// The one the frame carries.
        got: u64,
    },
    /// The payload did not authenticate (forged, corrupted, sealed with another key, from an
    /// older connection, or reflected back to its sender).
    AuthFailed,
    /// The message kind is not allowed from this side or at this point of the connection.
    UnexpectedKind(u8),
    /// A decrypted payload is not a well-formed message of its kind.
    Malformed(&'static str),
    /// A variable-length field exceeds its limit.
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value outside its allowed range.
    BadValue(&'static str),
    /// The local side tried to seal a message before the handshake allows it.
    NotReady,
    /// The sequence number space is exhausted (2^64 frames).
    SequenceExhausted,
    /// An earlier error closed this session.
    Poisoned,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::BadMagic => write!(f, "bad frame magic"),
            ProtoError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            ProtoError::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            ProtoError::ReservedBitsSet => write!(f, "reserved header bits set"),
            ProtoError::FrameTooLarge(n) => write!(
                f,
                "frame length {n} exceeds the limit {}",
                crate::MAX_SEALED
            ),
            ProtoError::FrameTooShort(n) => write!(f, "frame length {n} is shorter than the tag"),
            ProtoError::Truncated => write!(f, "stream ended inside a frame"),
            ProtoError::UnknownVm(v) => write!(f, "no key for VM {v}"),
            ProtoError::VmMismatch { expected, got } => {
                write!(f, "frame for VM {got} on the connection of VM {expected}")
            }
            ProtoError::BadSequence { expected, got } => {
                write!(
                    f,
                    "sequence number {got}, expected {expected} (replay or reordering)"
                )
            }
            ProtoError::AuthFailed => write!(f, "frame failed authentication"),
            ProtoError::UnexpectedKind(k) => write!(f, "message kind {k:#04x} not allowed here"),
            ProtoError::Malformed(w) => write!(f, "malformed payload: {w}"),
            ProtoError::FieldTooLong { field, len, max } => {
                write!(f, "field {field} has {len} bytes, limit {max}")
            }
            ProtoError::BadValue(w) => write!(f, "bad value: {w}"),
            ProtoError::NotReady => write!(f, "handshake not complete"),
            ProtoError::SequenceExhausted => write!(f, "sequence numbers exhausted"),
            ProtoError::Poisoned => write!(f, "session closed by an earlier error"),
        }
    }
}

impl core::error::Error for ProtoError {}
