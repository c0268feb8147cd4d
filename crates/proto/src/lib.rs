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
//!
//! ```
//! use resilire_proto::*;
//! use std::collections::BTreeMap;
//!
//! let vm_key = Key([7; 32]);
//! // Primary (dom0 shim): a fresh random salt per connection.
//! let mut primary = Session::primary(42, vm_key.clone(), [0x11; 32]);
//! let hello = primary.seal(&Message::Hello(Hello {
//!     vm_uuid: [1; 16], name: "db", mem_pages: 1 << 18, block_size: 64, group_id: 0,
//!     features: 0, codec_id: 1, codec_params: &[], xl_config: "name = \"db\"\n",
//! })).unwrap();
//!
//! // Appliance: picks the key from the clear VM id; never-repeating local material.
//! let mut keys = BTreeMap::new();
//! keys.insert(42u64, vm_key);
//! let mut appliance = Session::appliance(keys, [0x22; 32]);
//! let (first, rest) = hello.split_at(10); // TCP may split anywhere
//! appliance.feed(first);
//! assert!(appliance.poll().unwrap().is_none());
//! appliance.feed(rest);
//! let Some(Message::Hello(h)) = appliance.poll().unwrap() else { panic!() };
//! assert_eq!(h.name, "db");
//! let welcome = appliance.seal(&Message::Welcome(Welcome {
//!     committed_epoch: None, features: 0, max_chunk: MAX_CHUNK as u32,
//! })).unwrap();
//!
//! primary.feed(&welcome);
//! assert!(matches!(primary.poll().unwrap(), Some(Message::Welcome(_))));
//! let frame = primary.seal(&Message::Epoch(EpochData { epoch: 1, chunk_index: 0, data: b"records" })).unwrap();
//! appliance.feed(&frame);
//! let Some(Message::Epoch(e)) = appliance.poll().unwrap() else { panic!() };
//! assert_eq!(e.data, b"records"); // a slice of the decrypted frame, no copy
//! appliance.feed(&frame); // replayed
//! assert_eq!(appliance.poll().unwrap_err(), ProtoError::BadSequence { expected: 2, got: 1 });
//! ```
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
    decode_payload, encode_payload, Ack, Bye, Commit, EpochData, ErrorCode, ErrorMsg, Heartbeat,
    Hello, Kind, Message, Read, ReadReply, Welcome,
};
pub use session::{KeyLookup, Role, Session, SingleKey, FEED_BUFFER_BOUND, FEED_SLICE};

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
