//! The Resilire epoch wire protocol (version 1).
//!
//! A connection carries frames between a *primary* (the dom0 shim of the host running a
//! protected VM) and an *appliance* (the backup that holds committed images). Every frame has a
//! small clear header (magic, version, kind, VM id, sequence number, sealed length) and a payload
//! sealed with ChaCha20-Poly1305 under a per-connection, per-direction key derived from the
//! protected VM's 32-byte key; the header is the associated data. The full format is in
//! `SPEC.md` beside this crate.
//!
//! Use [`Session`] on both sides:
//!
//! * the primary creates [`Session::primary`], seals a [`Message::Hello`] first, then feeds the
//!   bytes it reads from TCP with [`Session::feed`] and pulls messages with [`Session::poll`]
//!   (the first is a [`Message::Welcome`]); after that it seals EPOCH/COMMIT/... frames;
//! * the appliance creates [`Session::appliance`] with a [`KeyLookup`] that maps the clear VM id
//!   to that VM's key, feeds TCP bytes and polls: the first message is a [`Message::Hello`], after
//!   which it seals its [`Message::Welcome`].
//!
//! Any error returned by the session means "close this connection": the session is poisoned and
//! keeps returning [`ProtoError::Poisoned`]. No input makes this crate panic.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

mod crypto;
mod error;
mod frame;
mod msg;
mod session;
mod wire;

pub use crypto::{derive_appliance_salt, Key, Salt, KEY_LEN, SALT_LEN, TAG_LEN};
pub use error::ProtoError;
pub use frame::{Header, HEADER_LEN, MAGIC, VERSION};
pub use msg::{
    decode_payload, encode_payload, Ack, Bye, Commit, EpochData, ErrorCode, ErrorMsg, Heartbeat, Hello, Kind,
    Message, Read, ReadReply, Welcome,
};
pub use session::{KeyLookup, Role, Session};

/// Size of a guest page in bytes (x86: 4 KiB). READ and READ_REPLY count in these pages.
pub const PAGE_SIZE: usize = 4096;
/// Largest codec chunk an EPOCH frame carries (1 MiB).
pub const MAX_CHUNK: usize = 1 << 20;
/// Largest number of pages one READ asks for, and one READ_REPLY carries (256 pages = 1 MiB).
pub const MAX_READ_PAGES: u32 = 256;
/// Largest VM name in HELLO, in bytes of UTF-8.
pub const MAX_NAME: usize = 128;
/// Largest `xl` domain configuration text in HELLO, in bytes of UTF-8 (64 KiB).
pub const MAX_XL_CONFIG: usize = 64 * 1024;
/// Largest opaque codec parameter block in HELLO.
pub const MAX_CODEC_PARAMS: usize = 256;
/// Largest reason text in ERROR, in bytes of UTF-8.
pub const MAX_REASON: usize = 1024;
/// Largest plaintext payload of any frame: the largest chunk plus room for the fixed fields.
pub const MAX_PAYLOAD: usize = MAX_CHUNK + 4096;
/// Largest sealed payload (plaintext plus the 16-byte tag); the header's length field is checked
/// against it before anything is buffered.
pub const MAX_SEALED: usize = MAX_PAYLOAD + TAG_LEN;
/// Smallest block size a HELLO may announce.
pub const MIN_BLOCK_SIZE: u32 = 32;
/// Largest block size a HELLO may announce.
pub const MAX_BLOCK_SIZE: u32 = 4096;
