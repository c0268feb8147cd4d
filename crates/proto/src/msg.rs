//! Messages and their payload encoding (the plaintext inside a sealed frame).

use crate::error::ProtoError;
use crate::wire::{check_len, put_bytes16, put_bytes32, Cursor};
use crate::{
    MAX_BLOCK_SIZE, MAX_CHUNK, MAX_CODEC_PARAMS, MAX_NAME, MAX_READ_PAGES, MAX_REASON,
    MAX_XL_CONFIG, MIN_BLOCK_SIZE, PAGE_SIZE,
};
use alloc::vec::Vec;

/// Message kinds (the header's kind byte). Ranges reserved for later versions: 0x40–0x5f group
/// checkpoints, 0x60–0x7f migration, 0x80–0x9f disk blocks, 0xf0–0xff experiments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Primary → appliance, first frame: who the protected VM is.
    Hello = 0x01,
    /// Appliance → primary, answer to HELLO: where to resume.
    Welcome = 0x02,
    /// Primary → appliance: one chunk of an epoch's codec stream.
    Epoch = 0x10,
    /// Primary → appliance: the epoch is complete; make it visible.
    Commit = 0x11,
    /// Appliance → primary: the epoch is committed.
    Ack = 0x12,
    /// Either way: liveness.
    Heartbeat = 0x20,
    /// Primary → appliance: fetch committed pages back.
    Read = 0x30,
    /// Appliance → primary: the pages asked for.
    ReadReply = 0x31,
    /// Either way: a failure, with a code and a reason; the sender closes afterwards.
    Error = 0x3e,
    /// Either way: orderly end of the connection.
    Bye = 0x3f,
}

impl Kind {
    /// The kind for a header byte, if known.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Hello,
            0x02 => Kind::Welcome,
            0x10 => Kind::Epoch,
            0x11 => Kind::Commit,
            0x12 => Kind::Ack,
            0x20 => Kind::Heartbeat,
            0x30 => Kind::Read,
            0x31 => Kind::ReadReply,
            0x3e => Kind::Error,
            0x3f => Kind::Bye,
            _ => return None,
        })
    }

    /// Whether the primary may send this kind.
    pub fn from_primary(self) -> bool {
        matches!(
            self,
            Kind::Hello
                | Kind::Epoch
                | Kind::Commit
                | Kind::Read
                | Kind::Heartbeat
                | Kind::Error
                | Kind::Bye
        )
    }

    /// Whether the appliance may send this kind.
    pub fn from_appliance(self) -> bool {
        matches!(
            self,
            Kind::Welcome | Kind::Ack | Kind::ReadReply | Kind::Heartbeat | Kind::Error | Kind::Bye
        )
    }
}

/// HELLO: the protected VM's identity and parameters, sent once by the primary as the first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The VM's UUID (as Xen knows it).
    pub vm_uuid: [u8; 16],
    /// The VM's name (UTF-8, at most [`MAX_NAME`] bytes).
    pub name: &'a str,
    /// Guest memory size in pages of [`PAGE_SIZE`] bytes (at least 1).
    pub mem_pages: u64,
    /// Codec block size in bytes: a power of two from [`MIN_BLOCK_SIZE`] to [`MAX_BLOCK_SIZE`].
    pub block_size: u32,
    /// Checkpoint group id (0: not in a group).
    pub group_id: u64,
    /// Optional features the primary offers (bit set; none defined in version 1).
    pub features: u64,
    /// Codec identifier (1: FGBI format version 1, 2: FGBI format version 2).
    pub codec_id: u16,
    /// Opaque codec parameters (at most [`MAX_CODEC_PARAMS`] bytes).
    pub codec_params: &'a [u8],
    /// The domain's `xl` configuration text, to recreate it at failover (at most
    /// [`MAX_XL_CONFIG`] bytes).
    pub xl_config: &'a str,
}

/// WELCOME: the appliance's answer to HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The last epoch the appliance holds committed for this VM (None: nothing yet), so a
    /// reconnecting primary resumes after it.
    pub committed_epoch: Option<u64>,
    /// The subset of the offered features the appliance accepts.
    pub features: u64,
    /// The largest chunk the appliance accepts in one EPOCH frame (at most [`MAX_CHUNK`]).
    pub max_chunk: u32,
}

/// EPOCH: one chunk of an epoch's codec stream (whole codec records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochData<'a> {
    /// Epoch number.
    pub epoch: u64,
    /// Index of this chunk within the epoch, from 0.
    pub chunk_index: u32,
    /// Opaque codec bytes (at most [`MAX_CHUNK`]).
    pub data: &'a [u8],
}

/// COMMIT: all chunks of the epoch were sent; the appliance makes it visible atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Epoch number.
    pub epoch: u64,
    /// Number of EPOCH chunks the epoch has.
    pub chunks: u32,
    /// Number of pages the epoch touches.
    pub pages: u64,
    /// Digest defined by the codec (all zero: none).
    pub digest: [u8; 32],
}

/// ACK: the appliance holds the epoch committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Epoch number.
    pub epoch: u64,
}

/// HEARTBEAT: liveness, either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's clock in milliseconds (opaque to the receiver, echoed in logs).
    pub time_ms: u64,
}

/// READ: fetch `count` committed pages from `first_pfn` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// Identifier echoed in the reply.
    pub request_id: u32,
    /// First page frame number.
    pub first_pfn: u64,
    /// Number of pages, 1 to [`MAX_READ_PAGES`].
    pub count: u32,
}

/// READ_REPLY: the committed pages asked for by a READ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReply<'a> {
    /// The READ's identifier.
    pub request_id: u32,
    /// First page frame number.
    pub first_pfn: u64,
    /// The pages' bytes: a whole number of pages, at most [`MAX_READ_PAGES`].
    pub data: &'a [u8],
}

/// An error code carried by ERROR and BYE. Codes not listed here are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// No error (BYE after an orderly end).
    pub const NONE: ErrorCode = ErrorCode(0);
    /// The peer broke the protocol.
    pub const PROTOCOL: ErrorCode = ErrorCode(1);
    /// The appliance does not serve this VM.
    pub const UNKNOWN_VM: ErrorCode = ErrorCode(2);
    /// The appliance has no memory left for this work.
    pub const NO_MEMORY: ErrorCode = ErrorCode(3);
    /// An epoch failed to decode; the previous committed image is kept.
    pub const DECODE_FAILED: ErrorCode = ErrorCode(4);
    /// An epoch number out of order.
    pub const BAD_EPOCH: ErrorCode = ErrorCode(5);
    /// The sender is shutting down.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(6);
    /// A READ outside the VM's memory.
    pub const OUT_OF_RANGE: ErrorCode = ErrorCode(7);
    /// Anything else.
    pub const INTERNAL: ErrorCode = ErrorCode(0xffff);
}

/// ERROR: a failure with a code and a reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMsg<'a> {
    /// The code.
    pub code: ErrorCode,
    /// Human-readable reason (UTF-8, at most [`MAX_REASON`] bytes).
    pub reason: &'a str,
}

/// BYE: orderly end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye {
    /// Why ([`ErrorCode::NONE`] for a normal end).
    pub code: ErrorCode,
}

/// A decoded message, borrowing variable-length fields from the frame buffer (zero-copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// HELLO.
    Hello(Hello<'a>),
    /// WELCOME.
    Welcome(Welcome),
    /// EPOCH data.
    Epoch(EpochData<'a>),
    /// COMMIT.
    Commit(Commit),
    /// ACK.
    Ack(Ack),
    /// HEARTBEAT.
    Heartbeat(Heartbeat),
    /// READ.
    Read(Read),
    /// READ_REPLY.
    ReadReply(ReadReply<'a>),
    /// ERROR.
    Error(ErrorMsg<'a>),
    /// BYE.
    Bye(Bye),
}

impl Message<'_> {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Welcome(_) => Kind::Welcome,
            Message::Epoch(_) => Kind::Epoch,
            Message::Commit(_) => Kind::Commit,
            Message::Ack(_) => Kind::Ack,
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::Read(_) => Kind::Read,
            Message::ReadReply(_) => Kind::ReadReply,
            Message::Error(_) => Kind::Error,
            Message::Bye(_) => Kind::Bye,
        }
    }
}

/// Checks a block size.
fn check_block_size(b: u32) -> Result<(), ProtoError> {
    if (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&b) && b.is_power_of_two() {
        Ok(())
    } else {
        Err(ProtoError::BadValue("block size"))
    }
}

/// Checks a page count of READ.
fn check_read_count(n: u32) -> Result<(), ProtoError> {
    if n == 0 || n > MAX_READ_PAGES {
        Err(ProtoError::BadValue("read page count"))
    } else {
        Ok(())
    }
}

/// Checks the data of READ_REPLY: whole pages, at most [`MAX_READ_PAGES`].
fn check_read_data(d: &[u8]) -> Result<(), ProtoError> {
    check_len(
        "read reply data",
        d.len(),
        MAX_READ_PAGES as usize * PAGE_SIZE,
    )?;
    if !d.len().is_multiple_of(PAGE_SIZE) {
        return Err(ProtoError::BadValue("read reply data is not whole pages"));
    }
    Ok(())
}

/// Appends the payload encoding of `m` to `out`, checking every limit first (a message that
/// breaks a limit is refused, never truncated).
pub fn encode_payload(m: &Message<'_>, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    match m {
        Message::Hello(h) => {
            check_block_size(h.block_size)?;
            if h.mem_pages == 0 {
                return Err(ProtoError::BadValue("memory size"));
            }
            out.extend_from_slice(&h.vm_uuid);
            put_bytes16(out, "name", h.name.as_bytes(), MAX_NAME)?;
            out.extend_from_slice(&h.mem_pages.to_le_bytes());
            out.extend_from_slice(&h.block_size.to_le_bytes());
            out.extend_from_slice(&h.group_id.to_le_bytes());
            out.extend_from_slice(&h.features.to_le_bytes());
            out.extend_from_slice(&h.codec_id.to_le_bytes());
            put_bytes16(out, "codec params", h.codec_params, MAX_CODEC_PARAMS)?;
            put_bytes32(out, "xl config", h.xl_config.as_bytes(), MAX_XL_CONFIG)?;
        }
        Message::Welcome(w) => {
            if w.max_chunk as usize > MAX_CHUNK || w.max_chunk == 0 {
                return Err(ProtoError::BadValue("max chunk"));
            }
            out.push(u8::from(w.committed_epoch.is_some()));
            out.extend_from_slice(&w.committed_epoch.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&w.features.to_le_bytes());
            out.extend_from_slice(&w.max_chunk.to_le_bytes());
        }
        Message::Epoch(e) => {
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.chunk_index.to_le_bytes());
            put_bytes32(out, "epoch chunk", e.data, MAX_CHUNK)?;
        }
        Message::Commit(c) => {
            out.extend_from_slice(&c.epoch.to_le_bytes());
            out.extend_from_slice(&c.chunks.to_le_bytes());
            out.extend_from_slice(&c.pages.to_le_bytes());
            out.extend_from_slice(&c.digest);
        }
        Message::Ack(a) => out.extend_from_slice(&a.epoch.to_le_bytes()),
        Message::Heartbeat(h) => out.extend_from_slice(&h.time_ms.to_le_bytes()),
        Message::Read(r) => {
            check_read_count(r.count)?;
            out.extend_from_slice(&r.request_id.to_le_bytes());
            out.extend_from_slice(&r.first_pfn.to_le_bytes());
            out.extend_from_slice(&r.count.to_le_bytes());
        }
        Message::ReadReply(r) => {
            check_read_data(r.data)?;
            out.extend_from_slice(&r.request_id.to_le_bytes());
            out.extend_from_slice(&r.first_pfn.to_le_bytes());
            put_bytes32(
                out,
                "read reply data",
                r.data,
                MAX_READ_PAGES as usize * PAGE_SIZE,
            )?;
        }
        Message::Error(e) => {
            out.extend_from_slice(&e.code.0.to_le_bytes());
            put_bytes16(out, "reason", e.reason.as_bytes(), MAX_REASON)?;
        }
        Message::Bye(b) => out.extend_from_slice(&b.code.0.to_le_bytes()),
    }
    Ok(())
}

/// Decodes the payload of a frame of kind `kind`. Bytes after the fields version 1 defines are
/// ignored (later minor extensions append fields); every length is checked against its limit
/// before use. Never panics.
pub fn decode_payload(kind: Kind, p: &[u8]) -> Result<Message<'_>, ProtoError> {
    let mut c = Cursor::new(p);
    let m = match kind {
        Kind::Hello => {
            let vm_uuid = c.array::<16>("vm uuid")?;
            let name = c.str16("name", MAX_NAME)?;
            let mem_pages = c.u64("memory size")?;
            let block_size = c.u32("block size")?;
            let group_id = c.u64("group id")?;
            let features = c.u64("features")?;
            let codec_id = c.u16("codec id")?;
            let codec_params = c.bytes16("codec params", MAX_CODEC_PARAMS)?;
            let xl_config = c.str32("xl config", MAX_XL_CONFIG)?;
            check_block_size(block_size)?;
            if mem_pages == 0 {
                return Err(ProtoError::BadValue("memory size"));
            }
            Message::Hello(Hello {
                vm_uuid,
                name,
                mem_pages,
                block_size,
                group_id,
                features,
                codec_id,
                codec_params,
                xl_config,
            })
        }
        Kind::Welcome => {
            let has = c.u8("committed flag")?;
            let epoch = c.u64("committed epoch")?;
            let features = c.u64("features")?;
            let max_chunk = c.u32("max chunk")?;
            let committed_epoch = match has {
                0 => None,
                1 => Some(epoch),
                _ => return Err(ProtoError::BadValue("committed flag")),
            };
            if max_chunk as usize > MAX_CHUNK || max_chunk == 0 {
                return Err(ProtoError::BadValue("max chunk"));
            }
            Message::Welcome(Welcome {
                committed_epoch,
                features,
                max_chunk,
            })
        }
        Kind::Epoch => {
            let epoch = c.u64("epoch")?;
            let chunk_index = c.u32("chunk index")?;
            let data = c.bytes32("epoch chunk", MAX_CHUNK)?;
            Message::Epoch(EpochData {
                epoch,
                chunk_index,
                data,
            })
        }
        Kind::Commit => Message::Commit(Commit {
            epoch: c.u64("epoch")?,
            chunks: c.u32("chunks")?,
            pages: c.u64("pages")?,
            digest: c.array::<32>("digest")?,
        }),
        Kind::Ack => Message::Ack(Ack {
            epoch: c.u64("epoch")?,
        }),
        Kind::Heartbeat => Message::Heartbeat(Heartbeat {
            time_ms: c.u64("time")?,
        }),
        Kind::Read => {
            let r = Read {
                request_id: c.u32("request id")?,
                first_pfn: c.u64("pfn")?,
                count: c.u32("count")?,
            };
            check_read_count(r.count)?;
            Message::Read(r)
        }
        Kind::ReadReply => {
            let request_id = c.u32("request id")?;
            let first_pfn = c.u64("pfn")?;
            let data = c.bytes32("read reply data", MAX_READ_PAGES as usize * PAGE_SIZE)?;
            check_read_data(data)?;
            Message::ReadReply(ReadReply {
                request_id,
                first_pfn,
                data,
            })
        }
        Kind::Error => {
            let code = ErrorCode(c.u16("code")?);
            let reason = c.str16("reason", MAX_REASON)?;
            Message::Error(ErrorMsg { code, reason })
        }
        Kind::Bye => Message::Bye(Bye {
            code: ErrorCode(c.u16("code")?),
        }),
    };
    let _extension = c.rest();
    Ok(m)
}

/// Checks that a length fits a limit; re-exported for the session.
pub(crate) fn check_payload_len(len: usize) -> Result<(), ProtoError> {
    check_len("payload", len, crate::MAX_PAYLOAD)
}
