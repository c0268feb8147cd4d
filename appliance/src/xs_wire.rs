//! The xenstore wire protocol (xen/include/public/io/xs_wire.h): message
//! header, request payloads, response decoding, error names and watch events.
//!
//! Every message is a 16-byte header `{type, req_id, tx_id, len}` (native
//! endian u32s; x86 is little endian) followed by `len` payload bytes.
//! Strings in payloads are NUL separated.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// Largest payload a message may carry (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// Message types (`enum xsd_sockmsg_type`) used by the appliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    /// List the children of a node.
    Directory = 1,
    /// Read a node.
    Read = 2,
    /// Register a watch.
    Watch = 4,
    /// Remove a watch.
    Unwatch = 5,
    /// Start a transaction.
    TransactionStart = 6,
    /// Commit or abort a transaction.
    TransactionEnd = 7,
    /// Ask for the domain's home path.
    GetDomainPath = 10,
    /// Write a node.
    Write = 11,
    /// Create a node with an empty value.
    Mkdir = 12,
    /// Remove a node and its children.
    Rm = 13,
    /// Asynchronous watch event (daemon to guest).
    WatchEvent = 15,
    /// Error reply.
    Error = 16,
}

impl MsgType {
    /// Decodes a type number; `None` for types the appliance never receives.
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            1 => Directory,
            2 => Read,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            15 => WatchEvent,
            16 => Error,
            _ => return None,
        })
    }
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Raw message type.
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0 = none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Serialises the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }
}

/// Errors of the xenstore client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The node does not exist (ENOENT).
    NoEntry,
    /// Permission denied (EACCES).
    Access,
    /// Transaction conflict: retry (EAGAIN).
    Again,
    /// Invalid argument (EINVAL).
    Invalid,
    /// Node already exists (EEXIST).
    Exists,
    /// Quota or space exhausted (ENOSPC / ENOMEM / E2BIG).
    NoSpace,
    /// Any other error name returned by the daemon.
    Other(String),
    /// A request would exceed [`PAYLOAD_MAX`].
    TooBig,
    /// The daemon sent something that violates the protocol.
    Protocol(&'static str),
    /// No reply within the deadline.
    Timeout,
    /// The transport failed (ring corrupt, event channel error).
    Transport(&'static str),
}

impl XsError {
    /// Maps the error name carried by an `XS_ERROR` reply.
    pub fn from_name(name: &str) -> XsError {
        match name {
            "ENOENT" => XsError::NoEntry,
            "EACCES" | "EPERM" => XsError::Access,
            "EAGAIN" => XsError::Again,
            "EINVAL" => XsError::Invalid,
            "EEXIST" => XsError::Exists,
            "ENOSPC" | "ENOMEM" | "E2BIG" => XsError::NoSpace,
            other => XsError::Other(String::from(other)),
        }
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::NoEntry => f.write_str("no such node (ENOENT)"),
            XsError::Access => f.write_str("permission denied (EACCES)"),
            XsError::Again => f.write_str("transaction conflict (EAGAIN)"),
            XsError::Invalid => f.write_str("invalid argument (EINVAL)"),
            XsError::Exists => f.write_str("node exists (EEXIST)"),
            XsError::NoSpace => f.write_str("xenstore quota exhausted"),
            XsError::Other(s) => write!(f, "xenstore error {s}"),
            XsError::TooBig => f.write_str("request larger than XENSTORE_PAYLOAD_MAX"),
            XsError::Protocol(s) => write!(f, "xenstore protocol violation: {s}"),
            XsError::Timeout => f.write_str("xenstore did not answer in time"),
            XsError::Transport(s) => write!(f, "xenstore transport: {s}"),
        }
    }
}

/// Builds a complete request (header + payload made of `parts` concatenated).
pub fn encode_request(
    ty: MsgType,
    req_id: u32,
    tx_id: u32,
    parts: &[&[u8]],
) -> Result<Vec<u8>, XsError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > PAYLOAD_MAX {
        return Err(XsError::TooBig);
    }
    let mut msg = Vec::with_capacity(HEADER_LEN + len);
    msg.extend_from_slice(
        &Header {
            ty: ty as u32,
            req_id,
            tx_id,
            len: len as u32,
        }
        .encode(),
    );
    for p in parts {
        msg.extend_from_slice(p);
    }
    Ok(msg)
}

/// Splits a NUL-separated payload (`directory` replies, watch events) into
/// strings. A trailing NUL does not produce an empty last element.
pub fn split_strings(payload: &[u8]) -> Result<Vec<&str>, XsError> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|&b| b == 0)
        .map(|s| core::str::from_utf8(s).map_err(|_| XsError::Protocol("non UTF-8 string")))
        .collect()
}

/// A watch firing: the node that changed and the token given to `watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Path of the changed node (relative if the watch was relative).
    pub path: String,
    /// Token of the watch.
    pub token: String,
}

/// Parses the payload of an `XS_WATCH_EVENT` message.
pub fn parse_watch_event(payload: &[u8]) -> Result<WatchEvent, XsError> {
    let parts = split_strings(payload)?;
    match parts.as_slice() {
        [path, token, ..] => Ok(WatchEvent {
            path: String::from(*path),
            token: String::from(*token),
        }),
        _ => Err(XsError::Protocol("watch event without path and token")),
    }
}

/// Turns a reply into the caller's result: `XS_ERROR` becomes the matching
/// [`XsError`], any other type must equal the request's.
pub fn check_reply(expected: MsgType, hdr: &Header, payload: Vec<u8>) -> Result<Vec<u8>, XsError> {
    if hdr.ty == MsgType::Error as u32 {
        let name = split_strings(&payload)?;
        return Err(XsError::from_name(name.first().copied().unwrap_or("")));
    }
    if hdr.ty != expected as u32 {
        return Err(XsError::Protocol("reply type does not match request"));
    }
    Ok(payload)
}

/// Reassembles messages from the response byte stream.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends bytes read from the ring.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes still needed before the next message is complete (at least 1 when
    /// nothing is complete).
    pub fn missing(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[..HEADER_LEN]);
        (HEADER_LEN + Header::decode(&h).len as usize).saturating_sub(self.buf.len())
    }

    /// Removes and returns the next complete message, if any.
    pub fn next_message(&mut self) -> Result<Option<(Header, Vec<u8>)>, XsError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[..HEADER_LEN]);
        let hdr = Header::decode(&h);
        if hdr.len as usize > PAYLOAD_MAX {
            return Err(XsError::Protocol("reply longer than XENSTORE_PAYLOAD_MAX"));
        }
        let total = HEADER_LEN + hdr.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some((hdr, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_byte_order() {
        let h = Header {
            ty: 2,
            req_id: 7,
            tx_id: 0x0102_0304,
            len: 5,
        };
        let b = h.encode();
        assert_eq!(&b[..8], &[2, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(&b[8..12], &[4, 3, 2, 1]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn write_request_layout() {
        let m = encode_request(MsgType::Write, 3, 9, &[b"a/b", b"\0", b"val"]).unwrap();
        assert_eq!(m.len(), 16 + 7);
        assert_eq!(
            Header::decode(m[..16].try_into().unwrap()),
            Header {
                ty: 11,
                req_id: 3,
                tx_id: 9,
                len: 7
            }
        );
        assert_eq!(&m[16..], b"a/b\0val");
    }

    #[test]
    fn oversized_request_is_refused() {
        let big = vec![b'x'; PAYLOAD_MAX + 1];
        assert_eq!(
            encode_request(MsgType::Write, 1, 0, &[&big]),
            Err(XsError::TooBig)
        );
    }

    #[test]
    fn directory_and_watch_event_payloads() {
        assert_eq!(split_strings(b"a\0bb\0c\0").unwrap(), vec!["a", "bb", "c"]);
        assert_eq!(split_strings(b"").unwrap(), Vec::<&str>::new());
        assert_eq!(split_strings(b"\0").unwrap(), Vec::<&str>::new());
        let ev = parse_watch_event(b"resilire/config/tcp-port\0cfg\0").unwrap();
        assert_eq!(
            ev,
            WatchEvent {
                path: "resilire/config/tcp-port".into(),
                token: "cfg".into()
            }
        );
        assert!(parse_watch_event(b"only-path\0").is_err());
    }

    #[test]
    fn error_replies_become_rust_errors() {
        let h = Header {
            ty: MsgType::Error as u32,
            req_id: 1,
            tx_id: 0,
            len: 7,
        };
        assert_eq!(
            check_reply(MsgType::Read, &h, b"ENOENT\0".to_vec()),
            Err(XsError::NoEntry)
        );
        assert_eq!(
            check_reply(MsgType::TransactionEnd, &h, b"EAGAIN\0".to_vec()),
            Err(XsError::Again)
        );
        assert_eq!(
            check_reply(MsgType::Read, &h, b"EWHAT\0".to_vec()),
            Err(XsError::Other("EWHAT".into()))
        );
        let ok = Header {
            ty: MsgType::Read as u32,
            req_id: 1,
            tx_id: 0,
            len: 2,
        };
        assert_eq!(
            check_reply(MsgType::Read, &ok, b"42".to_vec()),
            Ok(b"42".to_vec())
        );
        assert!(check_reply(MsgType::Write, &ok, Vec::new()).is_err());
    }

    #[test]
    fn decoder_reassembles_split_messages() {
        let a = encode_request(MsgType::Read, 1, 0, &[b"hello"]).unwrap();
        let b = encode_request(MsgType::WatchEvent, 0, 0, &[b"p\0t\0"]).unwrap();
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in stream.chunks(5) {
            d.push(chunk);
            while let Some((h, p)) = d.next_message().unwrap() {
                got.push((h.ty, p));
            }
        }
        assert_eq!(got, vec![(2, b"hello".to_vec()), (15, b"p\0t\0".to_vec())]);
        assert_eq!(d.missing(), HEADER_LEN);
    }

    #[test]
    fn decoder_rejects_absurd_lengths() {
        let mut d = Decoder::default();
        d.push(
            &Header {
                ty: 2,
                req_id: 1,
                tx_id: 0,
                len: 100_000,
            }
            .encode(),
        );
        assert!(d.next_message().is_err());
    }
}
