//! The Resilire appliance's epoch receiver: the backup side of the epoch wire protocol, sans-IO.
//!
//! [`Receiver`] owns the checkpoint [`Store`], the configured VM keys and one state machine per
//! connection. It does no I/O and reads no clock: the caller (the appliance over smoltcp TCP
//! sockets, or a host test) hands it the bytes a connection received and the current time in
//! milliseconds, and writes back the bytes it returns. See `README.md` beside this crate for the
//! state machine and the stances (takeover, abort on close, ACK after commit).
//!
//! ```text
//! TCP connect        -> let c = rx.accept(now_ms)
//! bytes received     -> rx.on_bytes(c, bytes, now_ms, &mut out)   // write `out`; Err => close
//! timer              -> rx.poll_timeouts(now_ms)
//! for c in rx.pending_connections() -> rx.poll_output(c, &mut out) // write `out`; Err => close
//! TCP close / reset  -> rx.on_close(c)
//! status writer      -> for s in rx.status() { ... }
//! ```
//!
//! ```
//! use resilire_proto::*;
//! use resilire_receiver::*;
//! use resilire_store::{HeapFrames, Store};
//!
//! let keys = [VmKey { name: "web1".into(), key: [7; 32] }];
//! let cfg = ReceiverConfig { boot_material: [1; 32], ..ReceiverConfig::default() };
//! let mut rx = Receiver::new(Store::new(HeapFrames::new(), 16 << 20), &keys, cfg).unwrap();
//!
//! // The primary (dom0 shim) names the VM by vm_id_of("web1").
//! let mut primary = Session::primary(vm_id_of("web1"), Key([7; 32]), [0x11; 32]);
//! let hello = primary.seal(&Message::Hello(Hello {
//!     vm_uuid: [1; 16], name: "web1", mem_pages: 256, block_size: 64, group_id: 0,
//!     features: 0, codec_id: CODEC_FGBI_V1, codec_params: &[], xl_config: "name = \"web1\"\n",
//! })).unwrap();
//!
//! let conn = rx.accept(0);                       // TCP connection accepted
//! let mut out = Vec::new();
//! rx.on_bytes(conn, &hello, 0, &mut out).unwrap(); // bytes received; `out` goes back
//! primary.feed(&out);
//! let Some(Message::Welcome(w)) = primary.poll().unwrap() else { panic!() };
//! assert_eq!(w.committed_epoch, None);            // nothing committed yet: full first epoch
//!
//! // A frame after WELCOME proves the primary live: it now owns the VM.
//! out.clear();
//! let hb = primary.seal(&Message::Heartbeat(Heartbeat { time_ms: 0 })).unwrap();
//! rx.on_bytes(conn, &hb, 5, &mut out).unwrap();
//! let s = rx.vm_status(vm_id_of("web1")).unwrap();
//! assert_eq!((s.state, s.last_heard_ms), (VmState::Syncing, Some(5)));
//! rx.on_close(conn);                             // TCP closed
//! assert_eq!(rx.vm_status(vm_id_of("web1")).unwrap().state, VmState::Idle);
//! ```
//!
//! VM identity: the appliance's configuration names each protected VM by a string (its key's
//! name under `resilire/config/keys/`); the wire protocol names it by a 64-bit id in the clear
//! frame header, which selects the key. The two are tied by [`vm_id_of`] (a hash of the name),
//! which the primary uses too. The id is also the store's [`ImageId`].
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use resilire_codec::{DecodeError, Decoder};
use resilire_proto::{
    Ack, ErrorCode, ErrorMsg, Heartbeat, Key, KeyLookup, Message, ProtoError, ReadReply, Session,
    Welcome, FEED_BUFFER_BOUND, FEED_SLICE, HEADER_LEN, MAX_CHUNK, MAX_CODEC_PARAMS, MAX_NAME,
    MAX_XL_CONFIG, PAGE_SIZE, SALT_LEN, TAG_LEN,
};
use resilire_store::{
    FrameAllocator, ImageId, PageLocation, Store, StoreError, IMAGE_BYTES_PER_PAGE, IMAGE_OVERHEAD,
};
use sha2::{Digest, Sha256};

/// A protected VM's id on the wire (the frame header's `vm_id`) and in the store ([`ImageId`]).
pub type VmId = ImageId;

/// Codec id of FGBI format version 1.
pub const CODEC_FGBI_V1: u16 = 1;
/// Codec id of FGBI format version 2 (adds split batches, `ZSPLIT`); the codec id is the FGBI
/// format version. HELLO must carry one of `CODEC_FGBI_V1..=CODEC_FGBI_V2` (the decoder reads
/// every version up to [`resilire_codec::FORMAT_VERSION`]).
pub const CODEC_FGBI_V2: u16 = 2;
const _: () = assert!(CODEC_FGBI_V2 == resilire_codec::FORMAT_VERSION);

/// The wire id of the VM configured under `name` (the key's name in the appliance's
/// configuration): the first 8 bytes, little-endian, of
/// `SHA-256("resilire/1 vm-id" || 0x00 || name)`. The primary must put the same value in its
/// frames' `vm_id`. Distinct names that collide are refused by [`Receiver::new`] /
/// [`Receiver::set_keys`].
pub fn vm_id_of(name: &str) -> VmId {
    let mut h = Sha256::new();
    h.update(b"resilire/1 vm-id\0");
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// One configured protected VM: the name it has in the appliance's configuration and its
/// 32-byte key. The key never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct VmKey {
    /// The VM's configured name (its wire id is [`vm_id_of`] of it).
    pub name: String,
    /// The VM's 32-byte key, shared with its primary.
    pub key: [u8; 32],
}

impl fmt::Debug for VmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmKey({}, <32 bytes>)", self.name)
    }
}

/// A key set the receiver cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The same name appears twice.
    Duplicate(String),
    /// Two names map to the same wire id (practically impossible; rename one).
    Collision(String, String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Duplicate(n) => write!(f, "VM '{n}' is configured twice"),
            KeyError::Collision(a, b) => {
                write!(f, "VM names '{a}' and '{b}' map to the same wire id")
            }
        }
    }
}

/// Settings of the receiver. Times are in the caller's milliseconds; 0 disables a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Material that differs at every boot of the appliance (a persistent boot counter, the RTC,
    /// RDRAND/RDSEED output...). [`Receiver::accept`] mixes it with a connection counter and the
    /// time into each connection's never-repeating local material (SPEC.md section 4).
    pub boot_material: [u8; 32],
    /// Largest EPOCH chunk accepted, announced in WELCOME (1..=[`MAX_CHUNK`]).
    pub max_chunk: u32,
    /// A connection that has not completed HELLO and proved itself live (its first frame after
    /// WELCOME) within this time is closed.
    pub handshake_timeout_ms: u64,
    /// A primary from which nothing arrived for this long is declared dead: its connection is
    /// closed and an epoch in progress discarded. Primaries send HEARTBEAT when idle.
    pub dead_peer_ms: u64,
    /// Admission control: a VM is admitted at its first HELLO only if this percentage of its
    /// memory size (plus its page tables) fits in the part of the budget not yet reserved by the
    /// other VMs. 100 guarantees room for a full copy; lower values count on sharing and zero
    /// pages (the store still refuses, per epoch, what does not fit).
    pub admission_percent: u32,
    /// Events kept until [`Receiver::take_events`]; older ones are dropped (and counted).
    pub max_events: usize,
    /// Heap bytes one admitted connection may come to use ([`CONN_MEMORY`] by default): its
    /// receive buffer (bounded by [`FEED_BUFFER_BOUND`]) and its decoder's scratch.
    pub conn_memory: usize,
    /// Heap bytes set aside for the connections' own memory (0: no limit). A HELLO is refused
    /// with `NO_MEMORY` when admitting its connection would let the admitted connections (of
    /// other VMs) reach more than this at [`ReceiverConfig::conn_memory`] each.
    pub conn_memory_limit: usize,
}

/// Largest HELLO frame (header, salt, largest payload, tag): bytes beyond this before a HELLO
/// authenticated are refused, so that an unauthenticated peer cannot make the receiver buffer
/// more.
pub const MAX_HELLO_FRAME: usize = HEADER_LEN
    + SALT_LEN
    + 16
    + 2
    + MAX_NAME
    + 8
    + 4
    + 8
    + 8
    + 2
    + 2
    + MAX_CODEC_PARAMS
    + 4
    + MAX_XL_CONFIG
    + TAG_LEN;

/// Default [`ReceiverConfig::conn_memory`]: the session's receive buffer bound, the decoder's
/// copy of a compressed record (up to one chunk), its batch buffer (256 KiB), its op and page
/// buffers, and the zstd decoder's state (its window, at most one batch, plus about one block
/// and its tables).
pub const CONN_MEMORY: usize =
    FEED_BUFFER_BOUND + MAX_CHUNK + (256 << 10) + 3 * PAGE_SIZE + (640 << 10);

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            boot_material: [0; 32],
            max_chunk: MAX_CHUNK as u32,
            handshake_timeout_ms: 10_000,
            dead_peer_ms: 5_000,
            admission_percent: 100,
            max_events: 1024,
            conn_memory: CONN_MEMORY,
            conn_memory_limit: 0,
        }
    }
}

/// Identity of a connection, never reused by one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {}", self.0)
    }
}

/// Why a connection must be closed. Returned by [`Receiver::on_bytes`] and
/// [`Receiver::poll_output`]: the caller writes what was appended to `out` (an ERROR frame, when
/// one could be sealed), then closes the TCP connection. The receiver has already forgotten the
/// connection and discarded its epoch in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// The connection id is not (or no longer) known.
    UnknownConnection,
    /// A frame was refused by the protocol layer (malformed, forged, replayed, foreign key,
    /// unknown VM...). No ERROR frame can be sealed on a session in that state.
    Protocol(ProtoError),
    /// The receiver refused the request and sent an ERROR frame with this code and reason.
    Refused {
        /// The code sent.
        code: ErrorCode,
        /// The reason sent.
        reason: String,
    },
    /// The primary ended the connection with BYE or ERROR.
    PeerClosed,
    /// A newer authenticated connection of the same VM took over.
    Superseded {
        /// The connection that took over.
        by: ConnId,
    },
    /// Handshake or dead-peer timeout.
    Timeout,
    /// The VM's key was removed or changed.
    KeyWithdrawn,
    /// A reply could not be sealed (should not happen).
    Internal(ProtoError),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::UnknownConnection => write!(f, "unknown connection"),
            ConnError::Protocol(e) => write!(f, "frame refused: {e}"),
            ConnError::Refused { code, reason } => write!(f, "refused (code {}): {reason}", code.0),
            ConnError::PeerClosed => write!(f, "closed by the primary"),
            ConnError::Superseded { by } => write!(f, "superseded by {by}"),
            ConnError::Timeout => write!(f, "timeout"),
            ConnError::KeyWithdrawn => write!(f, "the VM's key was withdrawn"),
            ConnError::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

/// Refusals since the receiver started (the appliance publishes them in its status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames the protocol layer refused: malformed, forged (wrong key, bad tag), replayed or
    /// reordered, unknown VM, oversized before HELLO.
    pub frames_refused: u64,
    /// Requests the receiver refused with ERROR (epoch sequence, decode failure, no memory...).
    pub requests_refused: u64,
    /// Of those, refusals for lack of memory (`NO_MEMORY`: admission, store budget, heap).
    pub no_memory: u64,
}

/// What a VM's protection looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// A primary is connected and no epoch is committed yet (the first, full copy is on its
    /// way).
    Syncing,
    /// A primary is connected and at least one epoch is committed.
    Protected,
    /// No primary connected; the image (if any) holds its last committed epoch.
    Idle,
    /// The last connection ended in an error (see `last_error`) and no primary has reconnected
    /// since; the image holds its last committed epoch.
    Failed,
}

impl VmState {
    /// The value written to xenstore.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Syncing => "syncing",
            VmState::Protected => "protected",
            VmState::Idle => "idle",
            VmState::Failed => "failed",
        }
    }
}

/// A snapshot of one VM's status, for the xenstore status writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus<'a> {
    /// Wire id (and store image id).
    pub vm: VmId,
    /// Configured name.
    pub name: &'a str,
    /// State.
    pub state: VmState,
    /// Last committed epoch (None before the first commit or without an image).
    pub committed_epoch: Option<u64>,
    /// Bytes received on this VM's authenticated connections since the receiver started.
    pub bytes_received: u64,
    /// Epochs committed since the receiver started.
    pub epochs_committed: u64,
    /// Time of the last authenticated frame from its primary (caller's milliseconds).
    pub last_heard_ms: Option<u64>,
    /// The last error that ended a connection or refused the VM.
    pub last_error: Option<&'a str>,
    /// The connection that currently owns the VM.
    pub connection: Option<ConnId>,
    /// Pages of the held image (None: no image).
    pub pages: Option<u64>,
    /// Guest name from the last accepted HELLO ("" before).
    pub guest_name: &'a str,
    /// Bytes of the budget reserved for the VM by admission control.
    pub reserved_bytes: usize,
    /// Whether the VM still has a configured key.
    pub has_key: bool,
    /// Frames of this VM's connections refused by the protocol layer since the receiver started.
    pub frames_refused: u64,
    /// Requests of this VM refused with ERROR since the receiver started.
    pub requests_refused: u64,
}

/// What happened; see [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP connection was accepted.
    Accepted,
    /// An authenticated HELLO was answered with WELCOME.
    Hello {
        /// Guest name from HELLO.
        guest: String,
        /// Memory size in pages.
        pages: u64,
        /// The committed epoch announced (where the primary resumes).
        resume_from: Option<u64>,
    },
    /// The connection proved itself live and now owns its VM.
    Active {
        /// The older connection it replaced, if any.
        took_over: Option<ConnId>,
    },
    /// An epoch was committed (and ACK sent).
    Committed {
        /// Epoch number.
        epoch: u64,
        /// Its chunks.
        chunks: u32,
        /// Its page records.
        pages: u64,
    },
    /// The receiver refused something and sent ERROR.
    Refused {
        /// Code sent.
        code: ErrorCode,
        /// Reason sent.
        reason: String,
    },
    /// The protocol layer refused a frame (forged, replayed, malformed, foreign key...).
    FrameRefused(ProtoError),
    /// The primary sent ERROR.
    PeerError {
        /// Its code.
        code: ErrorCode,
        /// Its reason.
        reason: String,
    },
    /// The primary sent BYE.
    PeerBye {
        /// Its code.
        code: ErrorCode,
    },
    /// A newer connection of the same VM took over this one.
    Superseded {
        /// The newer connection.
        by: ConnId,
    },
    /// Handshake or dead-peer timeout.
    Timeout {
        /// Milliseconds since the last bytes (or since accept, during the handshake).
        idle_ms: u64,
    },
    /// The VM's key was removed or changed; its connection is closed.
    KeyWithdrawn,
    /// The connection is gone.
    Closed {
        /// The epoch in progress that was discarded (the previous committed image is kept).
        aborted_epoch: Option<u64>,
    },
}

/// Severity of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Warn,
    /// Normal life cycle.
    Info,
    /// Per-epoch detail.
    Debug,
}

/// A log record for the caller's log sink ([`Receiver::take_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The caller's time when it happened.
    pub time_ms: u64,
    /// The connection concerned.
    pub conn: Option<ConnId>,
    /// The VM concerned, once known.
    pub vm: Option<VmId>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// Severity.
    pub fn level(&self) -> Level {
        match &self.kind {
            EventKind::Refused { .. }
            | EventKind::FrameRefused(_)
            | EventKind::PeerError { .. }
            | EventKind::Timeout { .. }
            | EventKind::KeyWithdrawn => Level::Warn,
            EventKind::Committed { .. } => Level::Debug,
            EventKind::Closed {
                aborted_epoch: Some(_),
            } => Level::Warn,
            _ => Level::Info,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} ms]", self.time_ms)?;
        if let Some(c) = self.conn {
            write!(f, " {c}")?;
        }
        if let Some(v) = self.vm {
            write!(f, " vm {v:#018x}")?;
        }
        match &self.kind {
            EventKind::Accepted => write!(f, ": accepted"),
            EventKind::Hello {
                guest,
                pages,
                resume_from,
            } => match resume_from {
                Some(e) => write!(
                    f,
                    ": HELLO '{guest}' ({pages} pages), resumes after epoch {e}"
                ),
                None => write!(
                    f,
                    ": HELLO '{guest}' ({pages} pages), nothing committed yet"
                ),
            },
            EventKind::Active { took_over: Some(o) } => write!(f, ": live, took over from {o}"),
            EventKind::Active { took_over: None } => write!(f, ": live"),
            EventKind::Committed {
                epoch,
                chunks,
                pages,
            } => {
                write!(
                    f,
                    ": committed epoch {epoch} ({chunks} chunks, {pages} pages)"
                )
            }
            EventKind::Refused { code, reason } => {
                write!(f, ": refused (ERROR {}): {reason}", code.0)
            }
            EventKind::FrameRefused(e) => write!(f, ": frame refused, closing: {e}"),
            EventKind::PeerError { code, reason } => {
                write!(f, ": primary sent ERROR {}: {reason}", code.0)
            }
            EventKind::PeerBye { code } => write!(f, ": primary sent BYE {}", code.0),
            EventKind::Superseded { by } => write!(f, ": superseded by {by}"),
            EventKind::Timeout { idle_ms } => write!(f, ": timeout after {idle_ms} ms"),
            EventKind::KeyWithdrawn => write!(f, ": key withdrawn"),
            EventKind::Closed {
                aborted_epoch: Some(e),
            } => {
                write!(
                    f,
                    ": closed during epoch {e}; staged epoch discarded, committed image kept"
                )
            }
            EventKind::Closed {
                aborted_epoch: None,
            } => write!(f, ": closed"),
        }
    }
}

/// The key table a connection's session looks keys up in (shared, replaced on reconfiguration).
#[derive(Clone)]
struct KeyTable(Arc<BTreeMap<VmId, Key>>);

impl KeyLookup for KeyTable {
    fn key_for(&self, vm_id: u64) -> Option<Key> {
        self.0.get(&vm_id).cloned()
    }
}

/// Per-VM bookkeeping.
struct Vm {
    name: String,
    key: Option<Key>,
    /// Key generation at which the key was last set.
    key_gen: u64,
    reserved: usize,
    owner: Option<ConnId>,
    failed: bool,
    bytes_received: u64,
    epochs_committed: u64,
    last_heard_ms: Option<u64>,
    last_error: Option<String>,
    frames_refused: u64,
    requests_refused: u64,
    guest_name: String,
    vm_uuid: [u8; 16],
    group_id: u64,
    xl_config: String,
}

impl Vm {
    fn new(name: String, key: Key, key_gen: u64) -> Self {
        Vm {
            name,
            key: Some(key),
            key_gen,
            reserved: 0,
            owner: None,
            failed: false,
            bytes_received: 0,
            epochs_committed: 0,
            last_heard_ms: None,
            last_error: None,
            frames_refused: 0,
            requests_refused: 0,
            guest_name: String::new(),
            vm_uuid: [0; 16],
            group_id: 0,
            xl_config: String::new(),
        }
    }
}

/// Where a connection is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing authenticated yet.
    AwaitHello,
    /// HELLO answered with WELCOME; the primary has not yet proved itself live.
    Welcomed(VmId),
    /// Live; owns the VM.
    Active(VmId),
}

/// The epoch being received.
#[derive(Debug, Clone, Copy)]
struct Progress {
    epoch: u64,
    next_chunk: u32,
    records: u64,
}

/// Everything about a connection but its session.
struct ConnState {
    phase: Phase,
    /// Key generation when the connection was accepted.
    key_gen: u64,
    decoder: Option<Decoder>,
    progress: Option<Progress>,
    accepted_ms: u64,
    last_rx_ms: u64,
    /// Bytes received before the connection owned its VM.
    backlog: u64,
    pending_out: Vec<u8>,
    closed: Option<ConnError>,
}

struct Conn {
    session: Session<KeyTable>,
    st: ConnState,
}

/// A reply to seal once the message that caused it is released.
enum Reply {
    None,
    Welcome(Option<u64>),
    Ack(u64),
    Heartbeat(u64),
    Read {
        request_id: u32,
        vm: VmId,
        first_pfn: u64,
        count: u32,
    },
}

/// Why handling a message failed.
enum Fail {
    /// Send ERROR (code, reason), then close.
    Refuse(ErrorCode, String),
    /// Close without sending anything more.
    Close(ConnError),
}

/// The appliance's epoch receiver. See the crate documentation and `README.md`.
pub struct Receiver<A: FrameAllocator> {
    store: Store<A>,
    cfg: ReceiverConfig,
    keys: KeyTable,
    key_gen: u64,
    vms: BTreeMap<VmId, Vm>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    events: VecDeque<Event>,
    events_dropped: u64,
    read_buf: Vec<u8>,
    /// The latest time the caller passed in (for events of calls without a time).
    now: u64,
    counters: Counters,
    /// Heap bytes free, as the caller last reported ([`Receiver::set_heap_free`]).
    heap_free: Option<usize>,
}

impl<A: FrameAllocator> fmt::Debug for Receiver<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("store", &self.store)
            .field("vms", &self.vms.len())
            .field("connections", &self.conns.len())
            .finish()
    }
}

/// Validates a key set and returns it by wire id.
fn key_map(keys: &[VmKey]) -> Result<BTreeMap<VmId, (String, Key)>, KeyError> {
    let mut m: BTreeMap<VmId, (String, Key)> = BTreeMap::new();
    for k in keys {
        let id = vm_id_of(&k.name);
        if let Some((other, _)) = m.get(&id) {
            return Err(if *other == k.name {
                KeyError::Duplicate(k.name.clone())
            } else {
                KeyError::Collision(other.clone(), k.name.clone())
            });
        }
        m.insert(id, (k.name.clone(), Key(k.key)));
    }
    Ok(m)
}

impl<A: FrameAllocator> Receiver<A> {
    /// A receiver over `store` (its budget is the appliance's), serving the VMs of `keys`.
    pub fn new(store: Store<A>, keys: &[VmKey], cfg: ReceiverConfig) -> Result<Self, KeyError> {
        let mut r = Receiver {
            store,
            cfg,
            keys: KeyTable(Arc::new(BTreeMap::new())),
            key_gen: 0,
            vms: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            events: VecDeque::new(),
            events_dropped: 0,
            read_buf: Vec::new(),
            now: 0,
            counters: Counters::default(),
            heap_free: None,
        };
        r.set_keys(keys, 0)?;
        Ok(r)
    }

    /// Replaces the configured keys (the appliance re-read its configuration). New VMs appear
    /// in the status; connections of VMs whose key was removed or changed are closed
    /// ([`ConnError::KeyWithdrawn`], picked up through [`Receiver::poll_output`]). Images stay
    /// until [`Receiver::remove_vm`]. On error nothing changes.
    pub fn set_keys(&mut self, keys: &[VmKey], now_ms: u64) -> Result<(), KeyError> {
        let new = key_map(keys)?;
        self.now = self.now.max(now_ms);
        self.key_gen += 1;
        let gen = self.key_gen;
        let mut withdrawn = Vec::new();
        for (id, vm) in self.vms.iter_mut() {
            let same = matches!((new.get(id), &vm.key), (Some((_, k)), Some(old)) if k == old);
            if !same && vm.key.is_some() {
                vm.key = None;
                withdrawn.push(*id);
            }
        }
        for (id, (name, key)) in &new {
            match self.vms.get_mut(id) {
                Some(vm) if vm.key.is_some() => {}
                Some(vm) => {
                    vm.key = Some(key.clone());
                    vm.key_gen = gen;
                    vm.name = name.clone();
                }
                None => {
                    self.vms
                        .insert(*id, Vm::new(name.clone(), key.clone(), gen));
                }
            }
        }
        // Forget VMs without key and without image.
        let store = &self.store;
        self.vms
            .retain(|id, vm| vm.key.is_some() || store.page_count(*id).is_ok());
        self.keys = KeyTable(Arc::new(
            new.into_iter().map(|(id, (_, k))| (id, k)).collect(),
        ));
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for cid in ids {
            let Some(mut c) = self.conns.remove(&cid) else {
                continue;
            };
            let vm = match c.st.phase {
                Phase::Welcomed(v) | Phase::Active(v) => Some(v),
                Phase::AwaitHello => None,
            };
            if c.st.closed.is_none() && vm.is_some_and(|v| withdrawn.contains(&v)) {
                self.event(now_ms, Some(cid), vm, EventKind::KeyWithdrawn);
                let msg = ErrorMsg {
                    code: ErrorCode::UNKNOWN_VM,
                    reason: "the VM's key was withdrawn",
                };
                let _ = c
                    .session
                    .seal_into(&Message::Error(msg), &mut c.st.pending_out);
                self.shut(cid, &mut c, ConnError::KeyWithdrawn, now_ms);
            }
            self.conns.insert(cid, c);
        }
        Ok(())
    }

    /// A new TCP connection was accepted. Its local material (SPEC.md section 4) is derived from
    /// the configured boot material, a connection counter and `now_ms`.
    pub fn accept(&mut self, now_ms: u64) -> ConnId {
        let mut h = Sha256::new();
        h.update(b"resilire/1 receiver material\0");
        h.update(self.cfg.boot_material);
        h.update(self.next_conn.to_le_bytes());
        h.update(now_ms.to_le_bytes());
        let mut m = [0u8; 32];
        m.copy_from_slice(&h.finalize());
        self.accept_with_material(now_ms, m)
    }

    /// Like [`Receiver::accept`], with the caller's own never-repeating local material.
    pub fn accept_with_material(&mut self, now_ms: u64, local_material: [u8; 32]) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.now = self.now.max(now_ms);
        let conn = Conn {
            session: Session::appliance(self.keys.clone(), local_material),
            st: ConnState {
                phase: Phase::AwaitHello,
                key_gen: self.key_gen,
                decoder: None,
                progress: None,
                accepted_ms: now_ms,
                last_rx_ms: now_ms,
                backlog: 0,
                pending_out: Vec::new(),
                closed: None,
            },
        };
        self.conns.insert(id, conn);
        self.event(now_ms, Some(id), None, EventKind::Accepted);
        id
    }

    /// Bytes received on `conn` (any split). Replies are appended to `out`; write them to the
    /// connection. On `Err`, write `out` too (it may end with an ERROR frame), then close the
    /// connection: the receiver has already forgotten it (calling [`Receiver::on_close`] after
    /// is harmless).
    pub fn on_bytes(
        &mut self,
        conn: ConnId,
        data: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        let Some(mut c) = self.conns.remove(&conn) else {
            return Err(ConnError::UnknownConnection);
        };
        self.now = self.now.max(now_ms);
        out.append(&mut c.st.pending_out);
        if let Some(e) = c.st.closed.take() {
            return Err(e);
        }
        c.st.last_rx_ms = now_ms;
        match c.st.phase {
            Phase::Active(vm) => {
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.bytes_received += data.len() as u64;
                }
            }
            _ => c.st.backlog += data.len() as u64,
        }
        let mut res = Ok(());
        for piece in data.chunks(FEED_SLICE) {
            res = self.feed(conn, &mut c, piece, now_ms, out);
            if res.is_err() {
                break;
            }
        }
        match res {
            Ok(()) => {
                self.conns.insert(conn, c);
                Ok(())
            }
            Err(e) => {
                self.shut(conn, &mut c, e.clone(), now_ms);
                Err(e)
            }
        }
    }

    /// Buffers one slice (at most [`FEED_SLICE`] bytes) and handles the frames it completes.
    fn feed(
        &mut self,
        id: ConnId,
        c: &mut Conn,
        piece: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        if c.st.phase == Phase::AwaitHello && c.session.buffered() + piece.len() > MAX_HELLO_FRAME {
            // A primary sends nothing after HELLO before WELCOME: more than one HELLO is garbage.
            let e = ProtoError::FieldTooLong {
                field: "bytes before an authenticated HELLO",
                len: c.session.buffered() + piece.len(),
                max: MAX_HELLO_FRAME,
            };
            let Conn { session, st } = c;
            return Err(self.frame_refused(id, st, session, e, now_ms, out));
        }
        if c.session.try_feed(piece).is_err() {
            let reason = format!(
                "appliance memory exhausted: cannot buffer {} more bytes of this connection ({} buffered)",
                piece.len(),
                c.session.buffered()
            );
            let Conn { session, st } = c;
            return Err(self.refuse(id, st, session, ErrorCode::NO_MEMORY, reason, now_ms, out));
        }
        self.process(id, c, now_ms, out)
    }

    /// Logs and counts a frame the protocol layer refused and, when the session had authenticated
    /// its peer, tells it why with ERROR (SPEC.md section 2). Returns the connection's end.
    fn frame_refused(
        &mut self,
        id: ConnId,
        st: &mut ConnState,
        session: &mut Session<KeyTable>,
        e: ProtoError,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> ConnError {
        let vm = session.vm_id().or(match st.phase {
            Phase::Welcomed(v) | Phase::Active(v) => Some(v),
            Phase::AwaitHello => None,
        });
        self.counters.frames_refused += 1;
        self.event(now_ms, Some(id), vm, EventKind::FrameRefused(e));
        if let Some(v) = vm.and_then(|v| self.vms.get_mut(&v)) {
            v.frames_refused += 1;
            if v.owner.is_none() || v.owner == Some(id) {
                v.last_error = Some(format!("frame refused: {e}"));
                v.failed = true;
            }
        }
        if st.phase != Phase::AwaitHello && session.can_seal_refusal() {
            let reason = format!("frame refused: {e}");
            let msg = ErrorMsg {
                code: ErrorCode::PROTOCOL,
                reason: &reason,
            };
            let _ = session.seal_into(&Message::Error(msg), out);
        }
        ConnError::Protocol(e)
    }

    /// Logs and counts a refusal, records it in the VM's status and sends ERROR (code, reason).
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        id: ConnId,
        st: &mut ConnState,
        session: &mut Session<KeyTable>,
        code: ErrorCode,
        reason: String,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> ConnError {
        let vm = match st.phase {
            Phase::Welcomed(v) | Phase::Active(v) => Some(v),
            Phase::AwaitHello => session.vm_id(),
        };
        self.counters.requests_refused += 1;
        if code == ErrorCode::NO_MEMORY {
            self.counters.no_memory += 1;
        }
        self.event(
            now_ms,
            Some(id),
            vm,
            EventKind::Refused {
                code,
                reason: reason.clone(),
            },
        );
        if let Some(v) = vm.and_then(|v| self.vms.get_mut(&v)) {
            v.requests_refused += 1;
            if v.owner.is_none() || v.owner == Some(id) {
                v.last_error = Some(reason.clone());
                v.failed = true;
            }
        }
        let msg = ErrorMsg {
            code,
            reason: &reason,
        };
        if let Err(e) = session.seal_into(&Message::Error(msg), out) {
            // A reason too long for the frame: send a shorter one.
            let msg = ErrorMsg {
                code,
                reason: "refused",
            };
            if session.seal_into(&Message::Error(msg), out).is_err() {
                return ConnError::Internal(e);
            }
        }
        ConnError::Refused { code, reason }
    }

    /// Refusals counted since the receiver started.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Tells the receiver how many heap bytes are free now (the appliance's allocator knows):
    /// a HELLO is refused with `NO_MEMORY` when fewer than [`ReceiverConfig::conn_memory`] are.
    /// `None` (the default) disables the check.
    pub fn set_heap_free(&mut self, free: Option<usize>) {
        self.heap_free = free;
    }

    /// The connection closed or was reset. An epoch in progress is discarded: the VM's last
    /// committed image stays as it was. Unknown ids are ignored.
    pub fn on_close(&mut self, conn: ConnId) {
        let now_ms = self.now;
        if let Some(mut c) = self.conns.remove(&conn) {
            if c.st.closed.is_none() {
                self.shut(conn, &mut c, ConnError::PeerClosed, now_ms);
            }
        }
    }

    /// The peer of `conn` took output off the connection (TCP acknowledged bytes the receiver
    /// sent, for example a large READ reply): it is alive, and its silence meanwhile is not a
    /// dead peer (the dead-peer timeout restarts). Unknown ids are ignored.
    pub fn peer_alive(&mut self, conn: ConnId, now_ms: u64) {
        self.now = self.now.max(now_ms);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.st.last_rx_ms = c.st.last_rx_ms.max(now_ms);
        }
    }

    /// Bytes queued for `conn` outside [`Receiver::on_bytes`] (for example the ERROR telling a
    /// superseded connection why it is closed) are appended to `out`. `Err` means: write `out`,
    /// then close the connection (the receiver has forgotten it).
    pub fn poll_output(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Result<(), ConnError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(ConnError::UnknownConnection);
        };
        out.append(&mut c.st.pending_out);
        if let Some(e) = c.st.closed.clone() {
            self.conns.remove(&conn);
            return Err(e);
        }
        Ok(())
    }

    /// Connections with queued output or waiting to be closed: call [`Receiver::poll_output`]
    /// for each.
    pub fn pending_connections(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.st.pending_out.is_empty() || c.st.closed.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Applies the timeouts at `now_ms`: handshakes not completed within
    /// [`ReceiverConfig::handshake_timeout_ms`] and primaries silent for
    /// [`ReceiverConfig::dead_peer_ms`] are closed (their epoch in progress discarded). The
    /// affected connections then show in [`Receiver::pending_connections`]. Returns the next
    /// time this should be called, if any timeout is armed.
    pub fn poll_timeouts(&mut self, now_ms: u64) -> Option<u64> {
        self.now = self.now.max(now_ms);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for cid in ids {
            let Some(mut c) = self.conns.remove(&cid) else {
                continue;
            };
            if c.st.closed.is_none() {
                if let Some(deadline) = self.deadline(&c) {
                    if now_ms >= deadline {
                        let (idle, vm) = match c.st.phase {
                            Phase::Active(v) => (now_ms.saturating_sub(c.st.last_rx_ms), Some(v)),
                            Phase::Welcomed(v) => {
                                (now_ms.saturating_sub(c.st.accepted_ms), Some(v))
                            }
                            Phase::AwaitHello => (now_ms.saturating_sub(c.st.accepted_ms), None),
                        };
                        self.event(now_ms, Some(cid), vm, EventKind::Timeout { idle_ms: idle });
                        if matches!(c.st.phase, Phase::Active(_) | Phase::Welcomed(_)) {
                            let reason = format!("no frame for {idle} ms");
                            let msg = ErrorMsg {
                                code: ErrorCode::PROTOCOL,
                                reason: &reason,
                            };
                            let _ = c
                                .session
                                .seal_into(&Message::Error(msg), &mut c.st.pending_out);
                        }
                        self.shut(cid, &mut c, ConnError::Timeout, now_ms);
                    }
                }
            }
            self.conns.insert(cid, c);
        }
        self.next_deadline()
    }

    /// The earliest time at which [`Receiver::poll_timeouts`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.conns
            .values()
            .filter(|c| c.st.closed.is_none())
            .filter_map(|c| self.deadline(c))
            .min()
    }

    fn deadline(&self, c: &Conn) -> Option<u64> {
        match c.st.phase {
            Phase::AwaitHello | Phase::Welcomed(_) => {
                (self.cfg.handshake_timeout_ms > 0).then(|| {
                    c.st.accepted_ms
                        .saturating_add(self.cfg.handshake_timeout_ms)
                })
            }
            Phase::Active(_) => (self.cfg.dead_peer_ms > 0)
                .then(|| c.st.last_rx_ms.saturating_add(self.cfg.dead_peer_ms)),
        }
    }

    /// Status of every known VM (configured, or holding an image), in wire-id order.
    pub fn status(&self) -> impl Iterator<Item = VmStatus<'_>> + '_ {
        self.vms.iter().map(move |(&id, vm)| {
            let pages = self.store.page_count(id).ok();
            let committed_epoch = self.store.committed_epoch(id).ok().flatten();
            let state = match (vm.owner, committed_epoch) {
                (Some(_), Some(_)) => VmState::Protected,
                (Some(_), None) => VmState::Syncing,
                (None, _) if vm.failed => VmState::Failed,
                (None, _) => VmState::Idle,
            };
            VmStatus {
                vm: id,
                name: &vm.name,
                state,
                committed_epoch,
                bytes_received: vm.bytes_received,
                epochs_committed: vm.epochs_committed,
                last_heard_ms: vm.last_heard_ms,
                last_error: vm.last_error.as_deref(),
                connection: vm.owner,
                pages,
                guest_name: &vm.guest_name,
                reserved_bytes: vm.reserved,
                has_key: vm.key.is_some(),
                frames_refused: vm.frames_refused,
                requests_refused: vm.requests_refused,
            }
        })
    }

    /// Status of one VM.
    pub fn vm_status(&self, vm: VmId) -> Option<VmStatus<'_>> {
        self.status().find(|s| s.vm == vm)
    }

    /// Where each page of `vm`'s committed image lives, in pfn order (to publish for dom0).
    /// Frames are reused by later commits: freeze the VM (close its connection) before dom0
    /// maps them.
    pub fn page_directory(
        &self,
        vm: VmId,
    ) -> Result<impl Iterator<Item = PageLocation> + '_, StoreError> {
        self.store.page_directory(vm)
    }

    /// Reads page `pfn` of `vm`'s committed image.
    pub fn read_page(
        &mut self,
        vm: VmId,
        pfn: u64,
        out: &mut [u8; PAGE_SIZE],
    ) -> Result<(), StoreError> {
        self.store.read_page(vm, pfn, out)
    }

    /// The `xl` configuration text from `vm`'s last accepted HELLO ("" before).
    pub fn xl_config(&self, vm: VmId) -> Option<&str> {
        self.vms.get(&vm).map(|v| v.xl_config.as_str())
    }

    /// The UUID and group id from `vm`'s last accepted HELLO.
    pub fn identity(&self, vm: VmId) -> Option<([u8; 16], u64)> {
        self.vms.get(&vm).map(|v| (v.vm_uuid, v.group_id))
    }

    /// The checkpoint store (read-only: memory figures, statistics).
    pub fn store(&self) -> &Store<A> {
        &self.store
    }

    /// Puts `vm`'s compressed committed pages back into frames (before publishing its page
    /// directory); see [`Store::materialize`].
    pub fn materialize(&mut self, vm: VmId) -> Result<(), StoreError> {
        self.store.materialize(vm)
    }

    /// Compresses cold pages; see [`Store::compress_cold`].
    pub fn compress_cold(&mut self, min_age: u64, max_pages: usize) -> usize {
        self.store.compress_cold(min_age, max_pages)
    }

    /// Drops `vm`'s image and its reservation (an operator's decision, for example after the
    /// VM was destroyed or resized). Its connection, if any, is closed first.
    pub fn remove_vm(&mut self, vm: VmId, now_ms: u64) -> Result<(), StoreError> {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for cid in ids {
            let Some(mut c) = self.conns.remove(&cid) else {
                continue;
            };
            if c.st.closed.is_none()
                && matches!(c.st.phase, Phase::Welcomed(v) | Phase::Active(v) if v == vm)
            {
                let msg = ErrorMsg {
                    code: ErrorCode::UNKNOWN_VM,
                    reason: "the VM's image was removed",
                };
                let _ = c
                    .session
                    .seal_into(&Message::Error(msg), &mut c.st.pending_out);
                self.shut(cid, &mut c, ConnError::KeyWithdrawn, now_ms);
            }
            self.conns.insert(cid, c);
        }
        self.store.remove_image(vm)?;
        if let Some(v) = self.vms.get_mut(&vm) {
            v.reserved = 0;
        }
        if self.vms.get(&vm).is_some_and(|v| v.key.is_none()) {
            self.vms.remove(&vm);
        }
        Ok(())
    }

    /// Takes the log events gathered since the last call, oldest first.
    pub fn take_events(&mut self) -> impl Iterator<Item = Event> + '_ {
        self.events.drain(..)
    }

    /// Events dropped because more than [`ReceiverConfig::max_events`] were pending.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Number of open connections (including those waiting to be picked up as closed).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn event(&mut self, time_ms: u64, conn: Option<ConnId>, vm: Option<VmId>, kind: EventKind) {
        if self.cfg.max_events == 0 {
            self.events_dropped += 1;
            return;
        }
        while self.events.len() >= self.cfg.max_events {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(Event {
            time_ms,
            conn,
            vm,
            kind,
        });
    }

    /// Tears a connection down (it stays in the map until picked up, if the caller reinserts
    /// it): discards its epoch in progress, releases its VM, updates the status, logs.
    fn shut(&mut self, id: ConnId, c: &mut Conn, why: ConnError, now_ms: u64) {
        let mut aborted = None;
        let mut vm_of = None;
        if let Phase::Active(vm) = c.st.phase {
            vm_of = Some(vm);
            aborted = c.st.progress.take().map(|p| p.epoch);
            if let Some(v) = self.vms.get_mut(&vm) {
                if v.owner == Some(id) {
                    v.owner = None;
                    // Never fails for an existing image; the committed image is untouched.
                    let _ = self.store.abort(vm);
                    let err = match (&why, aborted) {
                        (ConnError::PeerClosed, None) => None,
                        (ConnError::Superseded { .. }, _) => None,
                        (ConnError::PeerClosed, Some(e)) => Some(format!(
                            "connection lost during epoch {e}; staged epoch discarded"
                        )),
                        (e, _) => Some(e.to_string()),
                    };
                    // A clean end keeps the VM's failure state (reset when a primary is live).
                    if let Some(e) = err {
                        v.failed = true;
                        v.last_error = Some(e);
                    }
                }
            }
        } else if let Phase::Welcomed(vm) = c.st.phase {
            vm_of = Some(vm);
        }
        c.st.decoder = None;
        c.st.closed = Some(why);
        self.event(
            now_ms,
            Some(id),
            vm_of,
            EventKind::Closed {
                aborted_epoch: aborted,
            },
        );
    }

    /// Polls and handles every complete frame buffered in `c`.
    fn process(
        &mut self,
        id: ConnId,
        c: &mut Conn,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        let Conn { session, st } = c;
        loop {
            let pending = match session.poll() {
                Ok(None) => return Ok(()),
                // HELLO's fields are copied so that the session (which now knows the VM) can be
                // asked for its VM id.
                Ok(Some(Message::Hello(h))) => Pending::Hello(OwnedHello::of(&h)),
                Ok(Some(msg)) => Pending::Done(self.handle(id, st, msg, now_ms)),
                Err(e) => {
                    return Err(self.frame_refused(id, st, session, e, now_ms, out));
                }
            };
            let result = match pending {
                Pending::Done(r) => r,
                Pending::Hello(h) => match (st.phase, session.vm_id()) {
                    (Phase::AwaitHello, Some(vm)) => self.hello(id, st, vm, &h, now_ms),
                    _ => Err(Fail::Refuse(
                        ErrorCode::PROTOCOL,
                        "unexpected HELLO".to_string(),
                    )),
                },
            };
            let reply = match result {
                Ok(r) => r,
                Err(Fail::Close(e)) => return Err(e),
                Err(Fail::Refuse(code, reason)) => {
                    return Err(self.refuse(id, st, session, code, reason, now_ms, out));
                }
            };
            if let Err((code, reason)) = self.seal_reply(session, reply, out)? {
                return Err(self.refuse(id, st, session, code, reason, now_ms, out));
            }
        }
    }

    /// Seals a reply. `Ok(Err((code, reason)))`: the reply cannot be given (no memory for a READ
    /// reply, an unreadable page): refuse with that.
    #[allow(clippy::type_complexity)]
    fn seal_reply(
        &mut self,
        session: &mut Session<KeyTable>,
        reply: Reply,
        out: &mut Vec<u8>,
    ) -> Result<Result<(), (ErrorCode, String)>, ConnError> {
        let r = match reply {
            Reply::None => Ok(()),
            Reply::Welcome(committed_epoch) => session.seal_into(
                &Message::Welcome(Welcome {
                    committed_epoch,
                    features: 0,
                    max_chunk: self.max_chunk(),
                }),
                out,
            ),
            Reply::Ack(epoch) => session.seal_into(&Message::Ack(Ack { epoch }), out),
            Reply::Heartbeat(time_ms) => {
                session.seal_into(&Message::Heartbeat(Heartbeat { time_ms }), out)
            }
            Reply::Read {
                request_id,
                vm,
                first_pfn,
                count,
            } => {
                let n = count as usize * PAGE_SIZE;
                // The reply's plaintext and its frame are the two large allocations of a READ:
                // both fallible, refused with NO_MEMORY rather than exhausting the heap.
                if self
                    .read_buf
                    .try_reserve(n.saturating_sub(self.read_buf.len()))
                    .is_err()
                    || out.try_reserve(n + 256).is_err()
                {
                    self.read_buf = Vec::new();
                    return Ok(Err((
                        ErrorCode::NO_MEMORY,
                        format!(
                            "appliance memory exhausted: no room for a READ reply of {count} pages"
                        ),
                    )));
                }
                self.read_buf.resize(n, 0);
                for (i, page) in self.read_buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
                    let page: &mut [u8; PAGE_SIZE] =
                        page.try_into().map_err(|_| ConnError::UnknownConnection)?;
                    if let Err(e) = self.store.read_page(vm, first_pfn + i as u64, page) {
                        let reason =
                            format!("reading committed page {}: {e}", first_pfn + i as u64);
                        return Ok(Err((ErrorCode::INTERNAL, reason)));
                    }
                }
                let m = Message::ReadReply(ReadReply {
                    request_id,
                    first_pfn,
                    data: &self.read_buf,
                });
                let r = session.seal_into(&m, out);
                // READs are rare (verification, failover): do not keep a large buffer on the heap.
                if self.read_buf.capacity() > 16 * PAGE_SIZE {
                    self.read_buf = Vec::new();
                }
                r
            }
        };
        r.map(Ok).map_err(ConnError::Internal)
    }

    fn max_chunk(&self) -> u32 {
        self.cfg.max_chunk.clamp(1, MAX_CHUNK as u32)
    }

    /// Budget bytes not reserved by admission control (other than `except`'s reservation).
    fn unreserved(&self, except: VmId) -> usize {
        let reserved: usize = self
            .vms
            .iter()
            .filter(|(id, _)| **id != except)
            .map(|(_, v)| v.reserved)
            .sum();
        self.store
            .budget()
            .saturating_sub(reserved)
            .saturating_sub(PAGE_SIZE)
    }

    /// Handles one authenticated message.
    fn handle(
        &mut self,
        id: ConnId,
        st: &mut ConnState,
        msg: Message<'_>,
        now_ms: u64,
    ) -> Result<Reply, Fail> {
        // Anything after WELCOME proves the primary live: it takes the VM over.
        let vm = match st.phase {
            Phase::AwaitHello => {
                return Err(Fail::Refuse(
                    ErrorCode::PROTOCOL,
                    "HELLO expected".to_string(),
                ));
            }
            Phase::Active(vm) => vm,
            Phase::Welcomed(vm) => {
                self.take_over(id, st, vm, now_ms);
                vm
            }
        };
        if let Some(v) = self.vms.get_mut(&vm) {
            v.last_heard_ms = Some(now_ms);
        }
        match msg {
            Message::Epoch(e) => {
                self.epoch(st, vm, e.epoch, e.chunk_index, e.data)?;
                Ok(Reply::None)
            }
            Message::Commit(c) => self.commit(id, st, vm, c.epoch, c.chunks, c.pages, now_ms),
            Message::Heartbeat(_) => Ok(Reply::Heartbeat(now_ms)),
            Message::Read(r) => {
                let pages = self.store.page_count(vm).unwrap_or(0);
                let end = r.first_pfn.checked_add(u64::from(r.count));
                if end.is_none_or(|e| e > pages) {
                    return Err(Fail::Refuse(
                        ErrorCode::OUT_OF_RANGE,
                        format!(
                            "READ of {} pages from pfn {} beyond the image of {pages} pages",
                            r.count, r.first_pfn
                        ),
                    ));
                }
                Ok(Reply::Read {
                    request_id: r.request_id,
                    vm,
                    first_pfn: r.first_pfn,
                    count: r.count,
                })
            }
            Message::Error(e) => {
                let reason = e.reason.to_string();
                self.event(
                    now_ms,
                    Some(id),
                    Some(vm),
                    EventKind::PeerError {
                        code: e.code,
                        reason: reason.clone(),
                    },
                );
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.last_error = Some(format!("primary reported error {}: {reason}", e.code.0));
                    v.failed = true;
                }
                Err(Fail::Close(ConnError::PeerClosed))
            }
            Message::Bye(b) => {
                self.event(
                    now_ms,
                    Some(id),
                    Some(vm),
                    EventKind::PeerBye { code: b.code },
                );
                if b.code != ErrorCode::NONE {
                    if let Some(v) = self.vms.get_mut(&vm) {
                        v.last_error = Some(format!("primary said BYE with code {}", b.code.0));
                        v.failed = true;
                    }
                }
                Err(Fail::Close(ConnError::PeerClosed))
            }
            // The session refuses these kinds from a primary; never reached.
            Message::Hello(_) | Message::Welcome(_) | Message::Ack(_) | Message::ReadReply(_) => {
                Err(Fail::Refuse(
                    ErrorCode::PROTOCOL,
                    "unexpected message".to_string(),
                ))
            }
        }
    }

    fn hello(
        &mut self,
        id: ConnId,
        st: &mut ConnState,
        vm: VmId,
        h: &OwnedHello,
        now_ms: u64,
    ) -> Result<Reply, Fail> {
        let Some(v) = self.vms.get(&vm) else {
            return Err(Fail::Refuse(
                ErrorCode::UNKNOWN_VM,
                format!("VM {vm:#018x} is not served here"),
            ));
        };
        if v.key.is_none() || v.key_gen > st.key_gen {
            return Err(Fail::Refuse(
                ErrorCode::UNKNOWN_VM,
                format!("the key of VM '{}' was changed or withdrawn", v.name),
            ));
        }
        let name = v.name.clone();
        if !(CODEC_FGBI_V1..=CODEC_FGBI_V2).contains(&h.codec_id) {
            return Err(Fail::Refuse(
                ErrorCode::PROTOCOL,
                format!("codec {} not supported (this appliance speaks FGBI v1..v2 = {CODEC_FGBI_V1}..{CODEC_FGBI_V2})", h.codec_id),
            ));
        }
        self.admit_connection(id, vm, &name)?;
        let decoder = Decoder::new(h.block_size as usize)
            .map_err(|e| Fail::Refuse(ErrorCode::PROTOCOL, format!("{e}")))?;
        match self.store.page_count(vm) {
            Ok(p) if p != h.mem_pages => {
                return Err(Fail::Refuse(
                    ErrorCode::PROTOCOL,
                    format!(
                        "VM '{name}' announces {} pages but the appliance holds an image of {p} pages; \
                         remove the image before protecting the resized VM",
                        h.mem_pages
                    ),
                ));
            }
            Ok(_) => {}
            Err(_) => {
                // Admission control, then the image.
                let mem = (h.mem_pages as u128) * PAGE_SIZE as u128;
                let tables =
                    (h.mem_pages as u128) * IMAGE_BYTES_PER_PAGE as u128 + IMAGE_OVERHEAD as u128;
                let need = mem * u128::from(self.cfg.admission_percent) / 100 + tables;
                let free = self.unreserved(vm);
                let budget = self.store.budget();
                if need > free as u128 {
                    return Err(Fail::Refuse(
                        ErrorCode::NO_MEMORY,
                        format!(
                            "VM '{name}' does not fit: {} MiB of memory needs {} KiB of the checkpoint budget, \
                             {} KiB of {} KiB are free (the rest is reserved by other VMs)",
                            mem >> 20,
                            need.div_ceil(1024),
                            free / 1024,
                            budget / 1024
                        ),
                    ));
                }
                if let Err(e) = self.store.add_image(vm, h.mem_pages) {
                    return Err(Fail::Refuse(
                        ErrorCode::NO_MEMORY,
                        format!("VM '{name}' does not fit: {e}"),
                    ));
                }
                if let Some(v) = self.vms.get_mut(&vm) {
                    v.reserved = usize::try_from(need).unwrap_or(usize::MAX);
                }
            }
        }
        let committed = self.store.committed_epoch(vm).ok().flatten();
        if let Some(v) = self.vms.get_mut(&vm) {
            v.guest_name = h.name.clone();
            v.vm_uuid = h.vm_uuid;
            v.group_id = h.group_id;
            v.xl_config = h.xl_config.clone();
        }
        st.decoder = Some(decoder);
        st.phase = Phase::Welcomed(vm);
        self.event(
            now_ms,
            Some(id),
            Some(vm),
            EventKind::Hello {
                guest: h.name.clone(),
                pages: h.mem_pages,
                resume_from: committed,
            },
        );
        Ok(Reply::Welcome(committed))
    }

    /// Heap admission of connection `id` (VM `vm`): room for its buffers among the connections
    /// admitted for other VMs (a reconnect of the same VM replaces its older connection), and in
    /// the heap as it is now.
    fn admit_connection(&self, id: ConnId, vm: VmId, name: &str) -> Result<(), Fail> {
        let per = self.cfg.conn_memory;
        let others = self
            .conns
            .iter()
            .filter(|(cid, c)| **cid != id && c.st.closed.is_none())
            .filter(|(_, c)| matches!(c.st.phase, Phase::Welcomed(v) | Phase::Active(v) if v != vm))
            .count();
        let limit = self.cfg.conn_memory_limit;
        if limit > 0 && (others + 1).saturating_mul(per) > limit {
            return Err(Fail::Refuse(
                ErrorCode::NO_MEMORY,
                format!(
                    "no memory for another connection: VM '{name}' would make {} connections at up to {} KiB each, \
                     the appliance sets {} KiB of its heap aside for connections",
                    others + 1,
                    per / 1024,
                    limit / 1024
                ),
            ));
        }
        if let Some(free) = self.heap_free {
            if free < per {
                return Err(Fail::Refuse(
                    ErrorCode::NO_MEMORY,
                    format!(
                        "appliance heap exhausted: {} KiB free, a connection of VM '{name}' needs up to {} KiB",
                        free / 1024,
                        per / 1024
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Connection `id` proved itself live: it becomes the VM's one owner; an older owner is
    /// told (ERROR) and closed, its epoch in progress discarded.
    fn take_over(&mut self, id: ConnId, st: &mut ConnState, vm: VmId, now_ms: u64) {
        let old = self.vms.get(&vm).and_then(|v| v.owner).filter(|o| *o != id);
        if let Some(old) = old {
            if let Some(mut oc) = self.conns.remove(&old) {
                if oc.st.closed.is_none() {
                    self.event(
                        now_ms,
                        Some(old),
                        Some(vm),
                        EventKind::Superseded { by: id },
                    );
                    let reason = format!("superseded by a newer connection of this VM ({id})");
                    let msg = ErrorMsg {
                        code: ErrorCode::PROTOCOL,
                        reason: &reason,
                    };
                    let _ = oc
                        .session
                        .seal_into(&Message::Error(msg), &mut oc.st.pending_out);
                    self.shut(old, &mut oc, ConnError::Superseded { by: id }, now_ms);
                }
                self.conns.insert(old, oc);
            }
        }
        // Whatever was staged belongs to no live connection any more.
        let _ = self.store.abort(vm);
        if let Some(v) = self.vms.get_mut(&vm) {
            v.owner = Some(id);
            v.failed = false;
            v.bytes_received += st.backlog;
            v.last_heard_ms = Some(now_ms);
        }
        st.backlog = 0;
        st.progress = None;
        st.phase = Phase::Active(vm);
        self.event(
            now_ms,
            Some(id),
            Some(vm),
            EventKind::Active { took_over: old },
        );
    }

    /// The epoch number the next epoch must carry.
    fn expected_epoch(&self, vm: VmId) -> Result<Option<u64>, Fail> {
        match self.store.committed_epoch(vm) {
            Ok(Some(n)) => n.checked_add(1).map(Some).ok_or_else(|| {
                Fail::Refuse(ErrorCode::BAD_EPOCH, "epoch numbers exhausted".to_string())
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(Fail::Refuse(ErrorCode::INTERNAL, format!("{e}"))),
        }
    }

    fn epoch(
        &mut self,
        st: &mut ConnState,
        vm: VmId,
        epoch: u64,
        chunk: u32,
        data: &[u8],
    ) -> Result<(), Fail> {
        if data.len() > self.max_chunk() as usize {
            return Err(Fail::Refuse(
                ErrorCode::PROTOCOL,
                format!(
                    "EPOCH chunk of {} bytes exceeds the announced maximum {}",
                    data.len(),
                    self.max_chunk()
                ),
            ));
        }
        let committed = self.store.committed_epoch(vm).ok().flatten();
        let kept = match committed {
            Some(n) => format!("epoch {n} kept"),
            None => "nothing committed yet".to_string(),
        };
        match st.progress {
            None => {
                if let Some(want) = self.expected_epoch(vm)? {
                    if epoch != want {
                        return Err(Fail::Refuse(
                            ErrorCode::BAD_EPOCH,
                            format!(
                                "EPOCH {epoch} out of sequence: expected epoch {want} ({kept})"
                            ),
                        ));
                    }
                }
                if chunk != 0 {
                    return Err(Fail::Refuse(
                        ErrorCode::PROTOCOL,
                        format!("epoch {epoch} starts with chunk {chunk}, expected chunk 0"),
                    ));
                }
                st.progress = Some(Progress {
                    epoch,
                    next_chunk: 0,
                    records: 0,
                });
            }
            Some(p) => {
                if epoch != p.epoch {
                    return Err(Fail::Refuse(
                        ErrorCode::BAD_EPOCH,
                        format!(
                            "EPOCH {epoch} inside epoch {} before its COMMIT ({kept})",
                            p.epoch
                        ),
                    ));
                }
                if chunk != p.next_chunk {
                    return Err(Fail::Refuse(
                        ErrorCode::PROTOCOL,
                        format!(
                            "epoch {epoch}: chunk {chunk} where chunk {} was due",
                            p.next_chunk
                        ),
                    ));
                }
            }
        }
        let Some(decoder) = st.decoder.as_mut() else {
            return Err(Fail::Refuse(ErrorCode::INTERNAL, "no decoder".to_string()));
        };
        let mut staging = self
            .store
            .staging(vm)
            .map_err(|e| Fail::Refuse(ErrorCode::INTERNAL, format!("{e}")))?;
        let res = decoder.apply_chunk(&mut staging, data);
        let stats = match res {
            Ok(s) => s,
            Err(DecodeError::OutOfMemory) => {
                let _ = self.store.abort(vm);
                st.progress = None;
                return Err(Fail::Refuse(
                    ErrorCode::NO_MEMORY,
                    format!("epoch {epoch} chunk {chunk}: appliance memory exhausted (decoder); staged epoch discarded, {kept}"),
                ));
            }
            Err(DecodeError::Target(e @ StoreError::OutOfMemory { .. })) => {
                let _ = self.store.abort(vm);
                st.progress = None;
                return Err(Fail::Refuse(
                    ErrorCode::NO_MEMORY,
                    format!(
                        "epoch {epoch} does not fit in the checkpoint store ({e}; budget {} KiB); \
                         staged epoch discarded, {kept}",
                        self.store.budget() / 1024
                    ),
                ));
            }
            Err(e) => {
                let _ = self.store.abort(vm);
                st.progress = None;
                return Err(Fail::Refuse(
                    ErrorCode::DECODE_FAILED,
                    format!("epoch {epoch} chunk {chunk} failed to decode: {e}; staged epoch discarded, {kept}"),
                ));
            }
        };
        if let Some(p) = st.progress.as_mut() {
            p.records += stats.records;
            p.next_chunk = p.next_chunk.checked_add(1).ok_or_else(|| {
                Fail::Refuse(
                    ErrorCode::PROTOCOL,
                    "too many chunks in one epoch".to_string(),
                )
            })?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        id: ConnId,
        st: &mut ConnState,
        vm: VmId,
        epoch: u64,
        chunks: u32,
        pages: u64,
        now_ms: u64,
    ) -> Result<Reply, Fail> {
        let p = match st.progress {
            Some(p) => p,
            None => {
                // An epoch without chunks (nothing changed).
                if let Some(want) = self.expected_epoch(vm)? {
                    if epoch != want {
                        return Err(Fail::Refuse(
                            ErrorCode::BAD_EPOCH,
                            format!("COMMIT {epoch} out of sequence: expected epoch {want}"),
                        ));
                    }
                }
                Progress {
                    epoch,
                    next_chunk: 0,
                    records: 0,
                }
            }
        };
        if epoch != p.epoch {
            return Err(Fail::Refuse(
                ErrorCode::BAD_EPOCH,
                format!("COMMIT {epoch} while epoch {} is being received", p.epoch),
            ));
        }
        if chunks != p.next_chunk {
            return Err(Fail::Refuse(
                ErrorCode::PROTOCOL,
                format!(
                    "COMMIT {epoch} announces {chunks} chunks, {} were received; epoch discarded",
                    p.next_chunk
                ),
            ));
        }
        if pages != p.records {
            return Err(Fail::Refuse(
                ErrorCode::PROTOCOL,
                format!("COMMIT {epoch} announces {pages} pages, {} page records were received; epoch discarded", p.records),
            ));
        }
        // FGBI v1 defines no digest: the AEAD already authenticates every byte.
        self.store
            .commit(vm, epoch)
            .map_err(|e| Fail::Refuse(ErrorCode::INTERNAL, format!("{e}")))?;
        st.progress = None;
        if let Some(v) = self.vms.get_mut(&vm) {
            v.epochs_committed += 1;
        }
        self.event(
            now_ms,
            Some(id),
            Some(vm),
            EventKind::Committed {
                epoch,
                chunks,
                pages,
            },
        );
        Ok(Reply::Ack(epoch))
    }
}

/// A message polled from a session, handled or (HELLO) waiting to be.
enum Pending {
    Done(Result<Reply, Fail>),
    Hello(OwnedHello),
}

/// The fields of a HELLO the receiver keeps.
struct OwnedHello {
    vm_uuid: [u8; 16],
    name: String,
    mem_pages: u64,
    block_size: u32,
    group_id: u64,
    codec_id: u16,
    xl_config: String,
}

impl OwnedHello {
    fn of(h: &resilire_proto::Hello<'_>) -> Self {
        OwnedHello {
            vm_uuid: h.vm_uuid,
            name: h.name.to_string(),
            mem_pages: h.mem_pages,
            block_size: h.block_size,
            group_id: h.group_id,
            codec_id: h.codec_id,
            xl_config: h.xl_config.to_string(),
        }
    }
}
