//! netfront: the frontend half of Xen's paravirtual network device
//! (`device/vif/0`), as specified by xen/io/netif.h and xen/io/ring.h.
//!
//! Shape of the driver:
//! - **Handshake** ([`Netfront::connect`]): read the backend's path and
//!   domain id, wait for it to reach `InitWait`, set up two shared rings (tx
//!   and rx, one page each, granted to the backend), allocate an unbound
//!   event channel for the backend, publish ring refs / channel / features in
//!   one xenstore transaction together with state `Initialised`, post every
//!   receive buffer, switch to `Connected` and wait for the backend to be
//!   `Connected` as well.
//! - **Buffers**: 256 receive pages and 256 transmit pages, allocated once
//!   from the frame allocator and granted for the whole connection
//!   (persistent grants of our own: the backend copies into rx pages with
//!   grant copy, `request-rx-copy`, and copies or maps tx pages until it has
//!   answered the request). Buffer `i` always uses grant `rx_bufs[i].gref`
//!   and request id `i`, so a response's id names its buffer.
//! - **No upcalls**: the appliance waits with `SCHEDOP_poll` on [`Netfront::port`];
//!   after draining the rings the driver re-arms `rsp_event` (the ring
//!   protocol's "final check") so that the backend notifies the next response.
//! - **Backend restarts**: the backend's `state` node is watched (token
//!   [`WATCH_TOKEN`]); on `Closing`/`Closed` the frontend tears its side down
//!   (revokes grants, closes the channel, state `Closed`), and reconnects as
//!   soon as the backend is back in `InitWait`.
//!
//! All shared-memory access (ring headers and slots) is in [`Sring`]; all
//! `#[repr(C)]` ABI records are at the top of this file.

use crate::pv::{events, gnttab, mm, time};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};
use log::{debug, info, warn};
use resilire_appliance::xenstore::{Client, Transport, NO_TX};
use resilire_appliance::xs_wire::XsError;
use resilire_boot::abi::PAGE_SIZE;
use resilire_boot::hypercall;

/// The device this driver drives (the first vif of the domain).
pub const DEVICE: &str = "device/vif/0";
/// Token of the watch on the backend's state node.
pub const WATCH_TOKEN: &str = "net-backend";

/// Slots per ring: the largest power of two of entries after the 64-byte
/// header in one page (tx entries are 12 bytes: 336 -> 256; rx 8: 504 -> 256).
const RING_SIZE: u32 = 256;
/// Size of the shared ring header (indices, private area, padding).
const RING_HDR: usize = 64;

// ---- ABI records (xen/io/netif.h); layouts checked at compile time ----

/// `struct netif_tx_request`.
#[repr(C)]
#[derive(Clone, Copy)]
struct TxRequest {
    gref: u32,
    offset: u16,
    flags: u16,
    id: u16,
    size: u16,
}

/// `struct netif_tx_response`.
#[repr(C)]
#[derive(Clone, Copy)]
struct TxResponse {
    id: u16,
    status: i16,
}

/// `struct netif_rx_request`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RxRequest {
    id: u16,
    pad: u16,
    gref: u32,
}

/// `struct netif_rx_response`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RxResponse {
    id: u16,
    offset: u16,
    flags: u16,
    status: i16,
}

/// A tx ring slot is a union of request and response: 12 bytes.
const TX_ENTRY: usize = 12;
/// An rx ring slot: 8 bytes.
const RX_ENTRY: usize = 8;
const _: () = assert!(core::mem::size_of::<TxRequest>() == TX_ENTRY);
const _: () = assert!(core::mem::size_of::<TxResponse>() <= TX_ENTRY);
const _: () = assert!(core::mem::size_of::<RxRequest>() == RX_ENTRY);
const _: () = assert!(core::mem::size_of::<RxResponse>() == RX_ENTRY);
const _: () = assert!(RING_HDR + RING_SIZE as usize * TX_ENTRY <= PAGE_SIZE);
const _: () = assert!(RING_HDR + RING_SIZE as usize * RX_ENTRY <= PAGE_SIZE);

/// `NETRXF_csum_blank`: the checksum is left for the receiver to fill in.
const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// `NETRXF_more_data` | `NETRXF_extra_info`: fragments we never asked for.
const NETRXF_MORE_OR_EXTRA: u16 = (1 << 2) | (1 << 3);

/// Xenbus states (xen/io/xenbus.h).
pub mod xenbus {
    /// Being created.
    pub const INITIALISING: u32 = 1;
    /// Waiting for the other end's details (the backend's start).
    pub const INIT_WAIT: u32 = 2;
    /// Details published, waiting for the other end.
    pub const INITIALISED: u32 = 3;
    /// Up.
    pub const CONNECTED: u32 = 4;
    /// Going down.
    pub const CLOSING: u32 = 5;
    /// Down.
    pub const CLOSED: u32 = 6;
}

// ---- shared rings ----

/// One shared ring page as the frontend sees it (`FRONT_RING` in ring.h):
/// the shared indices live in the page, the private producer and consumer
/// here.
struct Sring {
    base: *mut u8,
    entry: usize,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

impl Sring {
    /// Initialises the page at `base` (zeroed, event thresholds at 1 as
    /// `SHARED_RING_INIT` does).
    fn init(base: *mut u8, entry: usize) -> Sring {
        // SAFETY: `base` is a page from the frame allocator, mapped writable
        // and owned by the driver; the backend does not see it yet.
        unsafe { core::ptr::write_bytes(base, 0, PAGE_SIZE) };
        let r = Sring {
            base,
            entry,
            req_prod_pvt: 0,
            rsp_cons: 0,
        };
        r.set(REQ_EVENT, 1);
        r.set(RSP_EVENT, 1);
        r
    }

    fn get(&self, off: usize) -> u32 {
        // SAFETY: header words of the mapped ring page, updated concurrently
        // by the backend: volatile, 4-byte aligned.
        unsafe { read_volatile(self.base.add(off) as *const u32) }
    }

    fn set(&self, off: usize, v: u32) {
        // SAFETY: as in `get`.
        unsafe { write_volatile(self.base.add(off) as *mut u32, v) }
    }

    fn slot(&self, idx: u32) -> *mut u8 {
        // SAFETY: the index is masked to the ring size, which fits the page
        // (checked at compile time above).
        unsafe {
            self.base
                .add(RING_HDR + (idx & (RING_SIZE - 1)) as usize * self.entry)
        }
    }

    fn write_req<T: Copy>(&mut self, req: T) {
        // SAFETY: the slot at req_prod_pvt belongs to the frontend until
        // req_prod is published; T is one of the request records above,
        // whose alignment (<= 4) the slot offsets respect.
        unsafe { write_volatile(self.slot(self.req_prod_pvt) as *mut T, req) };
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
    }

    /// The next unconsumed response, if the backend produced one.
    fn next_rsp<T: Copy>(&mut self) -> Option<T> {
        if self.rsp_cons == self.get(RSP_PROD) {
            return None;
        }
        fence(Ordering::Acquire); // read the slot after rsp_prod
                                  // SAFETY: slots in [rsp_cons, rsp_prod) hold responses the backend
                                  // finished writing; T is the response record of this ring.
        let r = unsafe { read_volatile(self.slot(self.rsp_cons) as *const T) };
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Some(r)
    }

    /// Publishes queued requests; true if the backend asked to be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    fn push(&mut self) -> bool {
        let old = self.get(REQ_PROD);
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        fence(Ordering::Release); // requests before the index
        self.set(REQ_PROD, new);
        fence(Ordering::SeqCst); // index before reading req_event
        let ev = self.get(REQ_EVENT);
        new.wrapping_sub(ev) < new.wrapping_sub(old)
    }

    /// Asks for a notification at the next response and reports whether one
    /// is already there (`RING_FINAL_CHECK_FOR_RESPONSES`).
    fn final_check(&mut self) -> bool {
        if self.rsp_cons != self.get(RSP_PROD) {
            return true;
        }
        self.set(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        self.rsp_cons != self.get(RSP_PROD)
    }

    /// Requests in flight (posted, not yet answered).
    fn in_flight(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }
}

/// A page of packet memory and its grant.
struct Buf {
    frame: mm::Frame,
    gref: Option<u32>,
}

/// Counters for the log and the status.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received (Ethernet frames).
    pub rx_bytes: u64,
    /// Receive responses with an error status or flags we cannot handle.
    pub rx_errors: u64,
    /// Received frames marked `csum_blank` (should not happen: we advertise
    /// no checksum offload).
    pub rx_csum_blank: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit responses with an error status.
    pub tx_errors: u64,
    /// Frames dropped because every tx buffer was in flight.
    pub tx_dropped: u64,
    /// Completed handshakes.
    pub connects: u64,
}

/// Errors of the handshake.
#[derive(Debug)]
pub enum NetError {
    /// Xenstore failed or a node is missing.
    Xs(&'static str, XsError),
    /// A xenstore value is malformed.
    Bad(&'static str, String),
    /// The backend did not reach the expected state in time.
    Timeout(&'static str, u32),
    /// No memory for rings or buffers.
    NoMemory,
    /// Granting failed.
    Grant(gnttab::GntError),
    /// A hypercall failed.
    Xen(&'static str, hypercall::XenError),
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::Xs(w, e) => write!(f, "xenstore {w}: {e}"),
            NetError::Bad(w, v) => write!(f, "malformed {w}: {v:?}"),
            NetError::Timeout(w, s) => write!(f, "timed out waiting for {w} (backend state {s})"),
            NetError::NoMemory => f.write_str("out of page frames"),
            NetError::Grant(e) => write!(f, "grant: {e}"),
            NetError::Xen(w, e) => write!(f, "{w}: {e}"),
        }
    }
}

/// The netfront device.
pub struct Netfront {
    /// The device's MAC address (from `device/vif/0/mac`).
    pub mac: [u8; 6],
    backend: String,
    backend_id: u16,
    port: Option<u32>,
    tx_page: Buf,
    rx_page: Buf,
    tx: Sring,
    rx: Sring,
    tx_bufs: Vec<Buf>,
    tx_free: Vec<u16>,
    rx_bufs: Vec<Buf>,
    /// An rx buffer handed out by [`Netfront::recv`], reposted at the next call.
    rx_lent: Option<u16>,
    connected: bool,
    /// The backend path whose state is watched.
    watched: Option<String>,
    /// Grants the backend still mapped at the last disconnect (its rings,
    /// typically): revoked at the next connect, when it has let go.
    stale_grants: Vec<u32>,
    /// Counters.
    pub stats: Stats,
}

fn xs_u32<T: Transport>(
    xs: &mut Client<T>,
    path: &str,
    what: &'static str,
) -> Result<u32, NetError> {
    let v = xs.read(NO_TX, path).map_err(|e| NetError::Xs(what, e))?;
    v.trim().parse().map_err(|_| NetError::Bad(what, v))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn alloc_buf() -> Result<Buf, NetError> {
    Ok(Buf {
        frame: mm::alloc_frame().ok_or(NetError::NoMemory)?,
        gref: None,
    })
}

impl Netfront {
    /// Allocates the driver's pages (2 rings + 512 buffers, ~2 MiB) and
    /// connects to the backend.
    pub fn new<T: Transport>(xs: &mut Client<T>) -> Result<Netfront, NetError> {
        let tx_page = alloc_buf()?;
        let rx_page = alloc_buf()?;
        let mut tx_bufs = Vec::with_capacity(RING_SIZE as usize);
        let mut rx_bufs = Vec::with_capacity(RING_SIZE as usize);
        for _ in 0..RING_SIZE {
            tx_bufs.push(alloc_buf()?);
            rx_bufs.push(alloc_buf()?);
        }
        let tx = Sring::init(tx_page.frame.va, TX_ENTRY);
        let rx = Sring::init(rx_page.frame.va, RX_ENTRY);
        let mut nf = Netfront {
            mac: [0; 6],
            backend: String::new(),
            backend_id: 0,
            port: None,
            tx_page,
            rx_page,
            tx,
            rx,
            tx_bufs,
            tx_free: Vec::new(),
            rx_bufs,
            rx_lent: None,
            connected: false,
            watched: None,
            stale_grants: Vec::new(),
            stats: Stats::default(),
        };
        nf.connect(xs)?;
        Ok(nf)
    }

    /// The event channel shared with the backend (None while disconnected).
    pub fn port(&self) -> Option<u32> {
        self.port
    }

    /// Whether the device is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    fn backend_state<T: Transport>(&self, xs: &mut Client<T>) -> u32 {
        xs.read(NO_TX, &format!("{}/state", self.backend))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn wait_backend<T: Transport>(
        &self,
        xs: &mut Client<T>,
        what: &'static str,
        ok: impl Fn(u32) -> bool,
        timeout_ns: u64,
    ) -> Result<u32, NetError> {
        let deadline = time::now_ns() + timeout_ns;
        loop {
            let s = self.backend_state(xs);
            if ok(s) {
                return Ok(s);
            }
            if time::now_ns() >= deadline {
                return Err(NetError::Timeout(what, s));
            }
            time::sleep_ns(10_000_000);
        }
    }

    /// Runs the xenbus handshake (see the module documentation).
    pub fn connect<T: Transport>(&mut self, xs: &mut Client<T>) -> Result<(), NetError> {
        let t0 = time::now_ns();
        self.backend = xs
            .read(NO_TX, &format!("{DEVICE}/backend"))
            .map_err(|e| NetError::Xs("backend", e))?;
        self.backend_id = xs_u32(xs, &format!("{DEVICE}/backend-id"), "backend-id")? as u16;
        let mac = xs
            .read(NO_TX, &format!("{DEVICE}/mac"))
            .map_err(|e| NetError::Xs("mac", e))?;
        self.mac = parse_mac(&mac).ok_or(NetError::Bad("mac", mac))?;
        let _ = xs.write(
            NO_TX,
            &format!("{DEVICE}/state"),
            &format!("{}", xenbus::INITIALISING),
        );
        self.wait_backend(
            xs,
            "backend InitWait",
            |s| s == xenbus::INIT_WAIT,
            20_000_000_000,
        )?;

        // Grants the backend held at the last disconnect. A frame whose
        // grant is still mapped keeps its page: the frames are granted anew
        // below under fresh references either way.
        let before = self.stale_grants.len();
        self.stale_grants
            .retain(|&g| gnttab::end_access(g).is_err());
        if before > 0 {
            info!(
                "netfront: revoked {} stale grant(s), {} still mapped",
                before - self.stale_grants.len(),
                self.stale_grants.len()
            );
        }
        // Rings and buffers, granted to the backend.
        self.tx = Sring::init(self.tx_page.frame.va, TX_ENTRY);
        self.rx = Sring::init(self.rx_page.frame.va, RX_ENTRY);
        let be = self.backend_id;
        let grant = |b: &mut Buf, ro: bool| -> Result<u32, NetError> {
            let g = gnttab::grant_access(be, b.frame.mfn, ro).map_err(NetError::Grant)?;
            b.gref = Some(g);
            Ok(g)
        };
        let tx_ref = grant(&mut self.tx_page, false)?;
        let rx_ref = grant(&mut self.rx_page, false)?;
        for b in self.tx_bufs.iter_mut() {
            grant(b, true)?;
        }
        for b in self.rx_bufs.iter_mut() {
            grant(b, false)?;
        }
        self.tx_free = (0..RING_SIZE as u16).rev().collect();
        self.rx_lent = None;
        let port = hypercall::evtchn_alloc_unbound(be)
            .map_err(|e| NetError::Xen("EVTCHNOP_alloc_unbound", e))?;
        events::mask(port);
        events::clear(port);
        self.port = Some(port);

        let keys = [
            ("tx-ring-ref", format!("{tx_ref}")),
            ("rx-ring-ref", format!("{rx_ref}")),
            ("event-channel", format!("{port}")),
            ("request-rx-copy", "1".into()),
            ("feature-rx-notify", "1".into()),
            ("feature-no-csum-offload", "1".into()),
            ("feature-sg", "0".into()),
            ("feature-gso-tcpv4", "0".into()),
            ("feature-gso-tcpv6", "0".into()),
            ("state", format!("{}", xenbus::INITIALISED)),
        ];
        xs.transaction(8, |xs, tx| {
            for (k, v) in &keys {
                xs.write(tx, &format!("{DEVICE}/{k}"), v)?;
            }
            Ok(())
        })
        .map_err(|e| NetError::Xs("publishing ring details", e))?;

        // Every receive buffer goes on the ring before the backend connects.
        for id in 0..RING_SIZE as u16 {
            self.post_rx(id);
        }
        self.rx.push();
        xs.write(
            NO_TX,
            &format!("{DEVICE}/state"),
            &format!("{}", xenbus::CONNECTED),
        )
        .map_err(|e| NetError::Xs("state Connected", e))?;
        // netback turns Connected only once dom0's hotplug script (vif-bridge) has run: 15 s
        // in a passing lab run after network-attach, over 20 s on a loaded TCG host.
        self.wait_backend(
            xs,
            "backend Connected",
            |s| s == xenbus::CONNECTED,
            60_000_000_000,
        )?;
        self.connected = true;
        self.stats.connects += 1;
        events::notify(port);
        if self.watched.as_deref() != Some(self.backend.as_str()) {
            match xs.watch(&format!("{}/state", self.backend), WATCH_TOKEN) {
                Ok(()) => self.watched = Some(self.backend.clone()),
                Err(e) => warn!("netfront: cannot watch {}/state: {e}", self.backend),
            }
        }
        info!(
            "netfront: connected to backend domain {} ({}) in {} ms: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, event channel {port}, {} rx buffers posted",
            be,
            self.backend,
            (time::now_ns() - t0) / 1_000_000,
            self.mac[0],
            self.mac[1],
            self.mac[2],
            self.mac[3],
            self.mac[4],
            self.mac[5],
            self.rx.in_flight()
        );
        Ok(())
    }

    /// Tears the frontend side down after the backend went away: channel
    /// closed, grants revoked (a grant still mapped by the backend is leaked
    /// rather than reused), state `Closed`.
    pub fn disconnect<T: Transport>(&mut self, xs: &mut Client<T>) {
        self.connected = false;
        let _ = xs.write(
            NO_TX,
            &format!("{DEVICE}/state"),
            &format!("{}", xenbus::CLOSING),
        );
        // The backend unmaps the rings when it leaves Connected; give it a
        // moment so that the grants can be revoked rather than leaked.
        let _ = self.wait_backend(
            xs,
            "backend Closing",
            |s| s != xenbus::CONNECTED,
            2_000_000_000,
        );
        if let Some(p) = self.port.take() {
            let _ = hypercall::evtchn_close(p);
        }
        let bufs = [&mut self.tx_page, &mut self.rx_page]
            .into_iter()
            .chain(self.tx_bufs.iter_mut())
            .chain(self.rx_bufs.iter_mut());
        for b in bufs {
            if let Some(g) = b.gref.take() {
                if gnttab::end_access(g).is_err() {
                    self.stale_grants.push(g);
                }
            }
        }
        let _ = xs.write(
            NO_TX,
            &format!("{DEVICE}/state"),
            &format!("{}", xenbus::CLOSED),
        );
        warn!(
            "netfront: disconnected from {} ({} grant(s) still mapped by the backend, revoked later)",
            self.backend,
            self.stale_grants.len()
        );
    }

    /// Reacts to the backend's state (call when the watch fires): tears down
    /// on Closing/Closed, reconnects when the backend is back in InitWait.
    /// Returns true if the connection changed.
    pub fn on_backend_event<T: Transport>(&mut self, xs: &mut Client<T>) -> bool {
        let s = self.backend_state(xs);
        debug!("netfront: backend state {s}");
        if self.connected && (s == xenbus::CLOSING || s == xenbus::CLOSED || s == 0) {
            self.disconnect(xs);
            return true;
        }
        if !self.connected && s == xenbus::INIT_WAIT {
            match self.connect(xs) {
                Ok(()) => return true,
                Err(e) => {
                    warn!("netfront: reconnect failed: {e}");
                    self.disconnect(xs);
                }
            }
        }
        false
    }

    fn post_rx(&mut self, id: u16) {
        let gref = self.rx_bufs[id as usize].gref.expect("rx buffer granted");
        self.rx.write_req(RxRequest { id, pad: 0, gref });
    }

    /// Takes the next received frame: returns its bytes, which stay valid
    /// until the next call of `recv` or [`Netfront::kick`] (the buffer is
    /// reposted then).
    pub fn recv(&mut self) -> Option<(*const u8, usize)> {
        if let Some(id) = self.rx_lent.take() {
            self.post_rx(id);
        }
        if !self.connected {
            return None;
        }
        while let Some(r) = self.rx.next_rsp::<RxResponse>() {
            let id = r.id;
            if id as u32 >= RING_SIZE {
                self.stats.rx_errors += 1;
                warn!("netfront: rx response with bad id {id}");
                continue;
            }
            let (off, len) = (r.offset as usize, r.status as isize);
            if len <= 0 || r.flags & NETRXF_MORE_OR_EXTRA != 0 || off + len as usize > PAGE_SIZE {
                self.stats.rx_errors += 1;
                debug!(
                    "netfront: rx response dropped: status {} flags {:#x} offset {off}",
                    r.status, r.flags
                );
                self.post_rx(id);
                continue;
            }
            if r.flags & NETRXF_CSUM_BLANK != 0 {
                self.stats.rx_csum_blank += 1;
            }
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            self.rx_lent = Some(id);
            // SAFETY: the buffer page is mapped and not reposted (so the
            // backend does not write it) until the next recv/kick.
            let p = unsafe { self.rx_bufs[id as usize].frame.va.add(off) } as *const u8;
            return Some((p, len as usize));
        }
        None
    }

    fn reclaim_tx(&mut self) {
        while let Some(r) = self.tx.next_rsp::<TxResponse>() {
            if r.status != 0 {
                self.stats.tx_errors += 1;
                debug!("netfront: tx response id {} status {}", r.id, r.status);
            }
            if (r.id as u32) < RING_SIZE && !self.tx_free.contains(&r.id) {
                self.tx_free.push(r.id);
            } else {
                warn!("netfront: tx response with bad or duplicate id {}", r.id);
            }
        }
    }

    /// Whether a frame can be queued for sending now.
    pub fn can_send(&mut self) -> bool {
        self.reclaim_tx();
        self.connected && !self.tx_free.is_empty()
    }

    /// Builds a frame of `len` bytes with `f` directly in a granted tx page
    /// and queues it (sent at the next [`Netfront::kick`]). Without a free
    /// buffer (or a connection) the frame is built in scratch memory and
    /// dropped.
    pub fn send_with<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.reclaim_tx();
        let len = len.min(PAGE_SIZE);
        let id = if self.connected {
            self.tx_free.pop()
        } else {
            None
        };
        let Some(id) = id else {
            self.stats.tx_dropped += 1;
            let mut scratch = alloc::vec![0u8; len];
            return f(&mut scratch);
        };
        let b = &self.tx_bufs[id as usize];
        // SAFETY: the page is ours (its id is not in flight) and mapped.
        let page = unsafe { core::slice::from_raw_parts_mut(b.frame.va, len) };
        let r = f(page);
        let gref = b.gref.expect("tx buffer granted");
        self.tx.write_req(TxRequest {
            gref,
            offset: 0,
            flags: 0,
            id,
            size: len as u16,
        });
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += len as u64;
        r
    }

    /// Publishes queued tx and rx requests, notifies the backend if it asked
    /// for it, and re-arms response notifications. Returns true if responses
    /// are already waiting (the caller should not sleep).
    pub fn kick(&mut self) -> bool {
        if let Some(id) = self.rx_lent.take() {
            self.post_rx(id);
        }
        let Some(port) = self.port else { return false };
        let notify = self.tx.push() | self.rx.push();
        if notify {
            events::notify(port);
        }
        self.reclaim_tx();
        let rx_more = self.rx.final_check();
        let tx_more = self.tx.final_check();
        rx_more || (tx_more && self.tx_free.is_empty())
    }

    /// A one-line summary for the log.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "rx {} frames / {} B ({} errors, {} csum-blank), tx {} frames / {} B ({} errors, {} dropped), tx in flight {}, rx posted {}",
            s.rx_packets,
            s.rx_bytes,
            s.rx_errors,
            s.rx_csum_blank,
            s.tx_packets,
            s.tx_bytes,
            s.tx_errors,
            s.tx_dropped,
            self.tx.in_flight(),
            self.rx.in_flight()
        )
    }
}
