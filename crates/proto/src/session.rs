//! A connection's state on either side: sealing outgoing frames and an incremental reader of
//! incoming bytes.

use crate::crypto::{derive_appliance_salt, Dir, DirKey, Key, Salt, SALT_LEN, TAG_LEN};
use crate::error::ProtoError;
use crate::frame::{Header, HEADER_LEN};
use crate::msg::{check_payload_len, decode_payload, encode_payload, Kind, Message};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Largest slice [`Session::try_feed`] is meant to be given at once (callers split larger reads).
pub const FEED_SLICE: usize = 64 * 1024;
/// Bound of the receive buffer's capacity under [`Session::try_feed`]: one largest frame (header,
/// salt, sealed payload) plus one [`FEED_SLICE`].
pub const FEED_BUFFER_BOUND: usize = HEADER_LEN + SALT_LEN + crate::MAX_SEALED + FEED_SLICE;

/// Which end of the connection a [`Session`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dom0 side of the host running the protected VM; opens the connection with HELLO.
    Primary,
    /// The backup appliance; answers HELLO with WELCOME.
    Appliance,
}

/// Finds the key of a protected VM from the clear VM id of a frame (the appliance holds several).
pub trait KeyLookup {
    /// The VM's key, or None if this side does not serve that VM.
    fn key_for(&self, vm_id: u64) -> Option<Key>;
}

impl<F: Fn(u64) -> Option<Key>> KeyLookup for F {
    fn key_for(&self, vm_id: u64) -> Option<Key> {
        self(vm_id)
    }
}

impl KeyLookup for BTreeMap<u64, Key> {
    fn key_for(&self, vm_id: u64) -> Option<Key> {
        self.get(&vm_id).cloned()
    }
}

/// The lookup a primary uses: the one VM it protects.
#[derive(Debug, Clone)]
pub struct SingleKey {
    vm_id: u64,
    key: Key,
}

impl KeyLookup for SingleKey {
    fn key_for(&self, vm_id: u64) -> Option<Key> {
        (vm_id == self.vm_id).then(|| self.key.clone())
    }
}

/// One connection, seen from one side: seals outgoing messages into frames, and turns incoming
/// TCP bytes (split anywhere) into authenticated messages.
///
/// Every error is final: the session is then poisoned, further calls fail with
/// [`ProtoError::Poisoned`], and the caller closes the connection.
pub struct Session<L: KeyLookup = SingleKey> {
    role: Role,
    lookup: L,
    /// The VM this connection serves (the primary knows it from the start, the appliance from
    /// HELLO).
    vm_id: Option<u64>,
    key: Option<Key>,
    primary_salt: Option<Salt>,
    appliance_salt: Option<Salt>,
    /// The appliance's never-repeating local material for its salt.
    local_material: [u8; 32],
    send_key: Option<DirKey>,
    recv_key: Option<DirKey>,
    send_seq: u64,
    recv_seq: u64,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` that belong to frames already returned.
    consumed: usize,
    poisoned: bool,
    /// Whether the peer has proved it is live on this connection (see [`Session::peer_confirmed`]).
    confirmed: bool,
}

impl Session<SingleKey> {
    /// A primary's session for VM `vm_id` with its `key`; `primary_salt` must be 32 fresh random
    /// bytes for every connection (from the host's CSPRNG). The first message sealed must be
    /// [`Message::Hello`].
    pub fn primary(vm_id: u64, key: Key, primary_salt: Salt) -> Self {
        let hello = DirKey::hello(&key, &primary_salt);
        let mut s = Session::new(
            Role::Primary,
            SingleKey {
                vm_id,
                key: key.clone(),
            },
            [0; 32],
        );
        s.vm_id = Some(vm_id);
        s.key = Some(key);
        s.primary_salt = Some(primary_salt);
        s.send_key = Some(hello);
        s
    }
}

impl<L: KeyLookup> Session<L> {
    /// An appliance's session for a new connection. `lookup` maps a VM id to its key;
    /// `local_material` must never repeat across the appliance's connections, reboots included
    /// (for example a persistent counter, a clock reading and any hardware random bytes): it is
    /// mixed with the VM key and the primary's salt into the appliance's salt (see SPEC.md).
    pub fn appliance(lookup: L, local_material: [u8; 32]) -> Self {
        Session::new(Role::Appliance, lookup, local_material)
    }

    fn new(role: Role, lookup: L, local_material: [u8; 32]) -> Self {
        Session {
            role,
            lookup,
            vm_id: None,
            key: None,
            primary_salt: None,
            appliance_salt: None,
            local_material,
            send_key: None,
            recv_key: None,
            send_seq: 0,
            recv_seq: 0,
            buf: Vec::new(),
            consumed: 0,
            poisoned: false,
            confirmed: false,
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The VM this connection serves, once known.
    pub fn vm_id(&self) -> Option<u64> {
        self.vm_id
    }

    /// Whether both salts are known, so that both directions use their session keys.
    pub fn is_established(&self) -> bool {
        self.appliance_salt.is_some() && !self.poisoned
    }

    /// Whether the peer has proved that it takes part in *this* connection, not a replay of an
    /// older one: for the primary, once the appliance's first frame authenticated (it is sealed
    /// with keys bound to the primary's fresh salt); for the appliance, once a frame after HELLO
    /// authenticated (a replayed HELLO authenticates, but nothing after it can). An appliance
    /// should not act on a HELLO (for example replace an older connection of the same VM) before
    /// this is true; a primary sends a HEARTBEAT (or its first EPOCH) right after WELCOME.
    pub fn peer_confirmed(&self) -> bool {
        self.confirmed && !self.poisoned
    }

    /// Whether an error has closed this session.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Sequence number the next sealed frame gets.
    pub fn next_send_seq(&self) -> u64 {
        self.send_seq
    }

    /// Sequence number the next received frame must carry.
    pub fn next_recv_seq(&self) -> u64 {
        self.recv_seq
    }

    /// Number of received bytes buffered and not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// Seals `m` into a new frame.
    pub fn seal(&mut self, m: &Message<'_>) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        self.seal_into(m, &mut out)?;
        Ok(out)
    }

    /// Seals `m` into a frame appended to `out` (nothing is appended on error). A message that
    /// breaks a limit, or that this side may not send now, is refused without poisoning the
    /// session; the sequence number advances only on success.
    ///
    /// A poisoned session still seals one kind of message: ERROR, once this side has sent its
    /// first frame and both salts are known (the peer's HELLO, or the appliance's first frame,
    /// authenticated). That tells an authenticated peer why its connection is being closed
    /// (SPEC.md section 2); the frame takes the next sequence number like any other.
    pub fn seal_into(&mut self, m: &Message<'_>, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        let kind = m.kind();
        if self.poisoned && !(kind == Kind::Error && self.can_seal_refusal()) {
            return Err(ProtoError::Poisoned);
        }
        let seq = self.send_seq;
        let allowed = match self.role {
            Role::Primary => kind.from_primary() && ((seq == 0) == (kind == Kind::Hello)),
            Role::Appliance => kind.from_appliance() && appliance_kind_fits(kind, seq),
        };
        if !allowed {
            return Err(ProtoError::UnexpectedKind(kind as u8));
        }
        if seq == u64::MAX {
            return Err(ProtoError::SequenceExhausted);
        }
        let vm_id = self.vm_id.ok_or(ProtoError::NotReady)?;
        let clear_salt = if seq == 0 {
            match self.role {
                Role::Primary => self.primary_salt,
                Role::Appliance => self.appliance_salt,
            }
        } else {
            None
        };
        if seq == 0 && clear_salt.is_none() {
            return Err(ProtoError::NotReady);
        }
        let key = self.send_key.as_ref().ok_or(ProtoError::NotReady)?;

        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        if let Some(s) = clear_salt {
            out.extend_from_slice(&s);
        }
        let body = out.len();
        let res = encode_payload(m, out).and_then(|_| check_payload_len(out.len() - body));
        if let Err(e) = res {
            out.truncate(start);
            return Err(e);
        }
        let sealed_len = (out.len() - body + TAG_LEN) as u32;
        let header = Header {
            kind,
            vm_id,
            seq,
            sealed_len,
        }
        .to_bytes();
        let (aad, plain) = out[start..].split_at_mut(body - start);
        aad[..HEADER_LEN].copy_from_slice(&header);
        match key.seal(seq, aad, plain) {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
        self.send_seq += 1;
        if self.role == Role::Primary && kind == Kind::Hello {
            // Nothing more goes out until the appliance's salt is known.
            self.send_key = None;
        }
        Ok(())
    }

    /// Buffers bytes received from the connection (any split). Call [`Session::poll`] until it
    /// returns `Ok(None)` after each call, so that at most one partial frame stays buffered.
    /// Allocation failure aborts, as for any `Vec`; see [`Session::try_feed`].
    pub fn feed(&mut self, data: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(data);
        }
    }

    /// Like [`Session::feed`], but a buffer that cannot grow is an error instead of an
    /// allocation failure (nothing is buffered then; the caller closes the connection). The
    /// buffer's capacity stays within [`FEED_BUFFER_BOUND`] as long as the caller feeds at most
    /// [`FEED_SLICE`] bytes per call and polls in between (the receiver does): delivered frames
    /// are dropped from the front before it grows, and it never grows past one largest frame
    /// plus one slice by doubling.
    pub fn try_feed(&mut self, data: &[u8]) -> Result<(), alloc::collections::TryReserveError> {
        if self.poisoned {
            return Ok(());
        }
        if self.buf.capacity() - self.buf.len() < data.len() && self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity() {
            let target = need.max(self.buf.capacity().saturating_mul(2).min(FEED_BUFFER_BOUND));
            self.buf.try_reserve_exact(target - self.buf.len())?;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Bytes the receive buffer holds allocated (for memory accounting).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether an ERROR can still be sealed on this session, poisoned or not: this side sent its
    /// first frame and both salts are known.
    pub fn can_seal_refusal(&self) -> bool {
        self.send_seq > 0 && self.appliance_salt.is_some() && self.send_key.is_some()
    }

    /// Checks that the stream may end here: fails with [`ProtoError::Truncated`] when a partial
    /// frame is buffered.
    pub fn finish(&self) -> Result<(), ProtoError> {
        if self.poisoned {
            Err(ProtoError::Poisoned)
        } else if self.buffered() > 0 {
            Err(ProtoError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the next authenticated message if a whole frame is buffered, `Ok(None)` if more
    /// bytes are needed, or an error (the session is then poisoned). The message borrows the
    /// session's buffer.
    pub fn poll(&mut self) -> Result<Option<Message<'_>>, ProtoError> {
        if self.poisoned {
            return Err(ProtoError::Poisoned);
        }
        match self.next_frame() {
            Ok(Some((kind, range))) => {
                // The payload was decoded successfully once in next_frame; decoding is pure, so
                // this second pass over the same bytes gives the same result.
                match self.buf.get(range) {
                    Some(p) => decode_payload(kind, p).map(Some),
                    None => Err(ProtoError::Malformed("internal range")),
                }
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.poisoned = true;
                self.buf = Vec::new();
                self.consumed = 0;
                Err(e)
            }
        }
    }

    /// Parses, checks and opens the next frame in the buffer; returns its kind and the range of
    /// its decrypted payload in `buf`.
    fn next_frame(&mut self) -> Result<Option<(Kind, core::ops::Range<usize>)>, ProtoError> {
        // Compact lazily: only once the delivered prefix is at least half the buffer, so that
        // many small frames in one large read cost linear time.
        if self.consumed > 0 && self.consumed * 2 >= self.buf.len() {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        let base = self.consumed;
        let Some(hb) = self.buf.get(base..base + HEADER_LEN) else {
            return Ok(None);
        };
        let mut hbytes = [0u8; HEADER_LEN];
        hbytes.copy_from_slice(hb);
        let h = Header::parse(&hbytes)?;

        // Which VM: bound already, or (appliance, first frame) looked up from the clear id.
        match self.vm_id {
            Some(v) if v != h.vm_id => {
                return Err(ProtoError::VmMismatch {
                    expected: v,
                    got: h.vm_id,
                })
            }
            _ => {}
        }
        if h.seq != self.recv_seq {
            return Err(ProtoError::BadSequence {
                expected: self.recv_seq,
                got: h.seq,
            });
        }
        let allowed = match self.role {
            Role::Appliance => h.kind.from_primary() && ((h.seq == 0) == (h.kind == Kind::Hello)),
            Role::Primary => h.kind.from_appliance() && appliance_kind_fits(h.kind, h.seq),
        };
        if !allowed {
            return Err(ProtoError::UnexpectedKind(h.kind as u8));
        }
        if h.seq == u64::MAX {
            return Err(ProtoError::SequenceExhausted);
        }
        let salt_len = if h.seq == 0 { SALT_LEN } else { 0 };
        let aad_len = HEADER_LEN + salt_len;
        let total = aad_len + h.sealed_len as usize;
        let available = self.buf.len() - base;

        // Keys for this frame.
        let mut new_state: Option<(Key, Salt, Salt)> = None;
        let mut fresh_key: Option<DirKey> = None;
        let key: &DirKey = if h.seq == 0 {
            let key = match self.role {
                Role::Appliance => self
                    .lookup
                    .key_for(h.vm_id)
                    .ok_or(ProtoError::UnknownVm(h.vm_id))?,
                Role::Primary => {
                    if self.send_seq == 0 {
                        // HELLO not sent yet: the appliance speaks first? Refuse.
                        return Err(ProtoError::UnexpectedKind(h.kind as u8));
                    }
                    self.key.clone().ok_or(ProtoError::NotReady)?
                }
            };
            if available < total {
                return Ok(None);
            }
            let mut salt = [0u8; SALT_LEN];
            salt.copy_from_slice(
                self.buf
                    .get(base + HEADER_LEN..base + aad_len)
                    .ok_or(ProtoError::Truncated)?,
            );
            let k = match self.role {
                Role::Appliance => {
                    let a = derive_appliance_salt(&key, &salt, &self.local_material);
                    let k = DirKey::hello(&key, &salt);
                    new_state = Some((key, salt, a));
                    k
                }
                Role::Primary => {
                    let p = self.primary_salt.ok_or(ProtoError::NotReady)?;
                    let k = DirKey::session(&key, &p, &salt, Dir::A2P);
                    new_state = Some((key, p, salt));
                    k
                }
            };
            &*fresh_key.insert(k)
        } else {
            if available < total {
                return Ok(None);
            }
            self.recv_key.as_ref().ok_or(ProtoError::NotReady)?
        };

        let frame = self
            .buf
            .get_mut(base..base + total)
            .ok_or(ProtoError::Truncated)?;
        let (aad, rest) = frame.split_at_mut(aad_len);
        let (plain, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        key.open(h.seq, aad, plain, &t)?;
        decode_payload(h.kind, plain)?;

        // Authenticated and well formed: advance the state.
        if let Some((key, ps, asalt)) = new_state {
            self.vm_id = Some(h.vm_id);
            self.send_key = Some(DirKey::session(
                &key,
                &ps,
                &asalt,
                if self.role == Role::Primary {
                    Dir::P2A
                } else {
                    Dir::A2P
                },
            ));
            if self.role == Role::Appliance {
                self.recv_key = Some(DirKey::session(&key, &ps, &asalt, Dir::P2A));
            } else {
                self.recv_key = fresh_key;
            }
            self.key = Some(key);
            self.primary_salt = Some(ps);
            self.appliance_salt = Some(asalt);
        }
        if self.role == Role::Primary || h.seq > 0 {
            self.confirmed = true;
        }
        self.recv_seq += 1;
        self.consumed = base + total;
        Ok(Some((h.kind, base + aad_len..base + total - TAG_LEN)))
    }
}

/// Whether the appliance may send `kind` as its frame number `seq`: its first frame is WELCOME,
/// or ERROR/BYE when it refuses the HELLO; WELCOME never comes later.
fn appliance_kind_fits(kind: Kind, seq: u64) -> bool {
    if seq == 0 {
        matches!(kind, Kind::Welcome | Kind::Error | Kind::Bye)
    } else {
        kind != Kind::Welcome
    }
}
