//! The appliance on the network: netfront ([`netfront`]), smoltcp on top of
//! it ([`device`]), and a TCP listener whose connections are handed to a
//! [`Service`] (the epoch receiver).
//!
//! [`Net`] is polled from the appliance's main loop: it drains netfront,
//! runs smoltcp, moves bytes between the TCP sockets and the service, kicks
//! netfront, and tells the loop which event channel to wait on and until
//! when (smoltcp's `poll_delay`).
//!
//! ICMP echo is answered by smoltcp itself for the interface address, so
//! dom0 can `ping` the appliance as soon as the interface is up.

pub mod device;
pub mod netfront;
pub mod service;

use crate::pv::{events, time};
use alloc::vec;
use alloc::vec::Vec;
use device::NetDevice;
use log::{info, warn};
use netfront::{NetError, Netfront};
use resilire_appliance::config::Config;
use resilire_appliance::xenstore::{Client, Transport};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

/// Receive buffer of each TCP socket (window scaling lets the peer use it all).
const TCP_RX_BUF: usize = 256 * 1024;
/// Transmit buffer of each TCP socket (replies are small).
const TCP_TX_BUF: usize = 64 * 1024;
/// At most this many TCP sockets (connections + the free listener).
const MAX_SOCKETS: usize = 16;
/// Stop reading a connection while this much service output is unsent (a
/// READ reply is up to 1 MiB: one at a time per connection, appended to an
/// empty buffer, keeps the heap small).
const OUT_HIGH_WATER: usize = 1;
/// Output buffers larger than this are given back to the heap once empty.
const OUT_KEEP: usize = 256 * 1024;

/// Where the appliance's time goes (ns since boot), for the receive profile: blocked waiting
/// for an event or a deadline (`app.rs`), in smoltcp and netfront (`iface.poll`, kicks), in
/// the service (the receiver, called from the socket loop).
pub mod profile {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
    /// Blocked in `events::wait`.
    pub static IDLE_NS: AtomicU64 = AtomicU64::new(0);
    /// In smoltcp's `Interface::poll` (with netfront's receive and transmit) and kicks.
    pub static STACK_NS: AtomicU64 = AtomicU64::new(0);
    /// In the socket loop (mostly the service).
    pub static SOCKETS_NS: AtomicU64 = AtomicU64::new(0);
    /// Adds `ns` to a counter.
    pub fn add(c: &AtomicU64, ns: u64) {
        c.fetch_add(ns, Relaxed);
    }
    /// (idle, stack, sockets) now.
    pub fn snapshot() -> (u64, u64, u64) {
        (
            IDLE_NS.load(Relaxed),
            STACK_NS.load(Relaxed),
            SOCKETS_NS.load(Relaxed),
        )
    }
}

/// What runs on top of the TCP connections (the epoch receiver).
pub trait Service {
    /// A connection was established; returns its id (None: refused, the
    /// connection is closed).
    fn accept(&mut self, now_ms: u64) -> Option<u64>;
    /// Bytes arrived on `conn`; replies go to `out`. An error closes the
    /// connection (after `out` is sent).
    fn on_bytes(
        &mut self,
        conn: u64,
        data: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ()>;
    /// More output for `conn` produced outside `on_bytes` (timers, a newer
    /// connection taking over). An error closes the connection after `out`.
    fn poll_output(&mut self, conn: u64, out: &mut Vec<u8>) -> Result<(), ()>;
    /// The peer took output off `conn` (TCP acknowledged it): it is alive.
    fn peer_alive(&mut self, conn: u64, now_ms: u64);
    /// The connection is gone.
    fn on_close(&mut self, conn: u64, now_ms: u64);
    /// Runs the service's timers; returns when (ms, same clock) to call again.
    fn timers(&mut self, now_ms: u64) -> Option<u64>;
}

struct Conn {
    handle: SocketHandle,
    id: Option<u64>,
    out: Vec<u8>,
    out_off: usize,
    bytes_in: u64,
    bytes_out: u64,
    /// smoltcp's send queue at the last look.
    sendq: usize,
    /// The service refused the connection: close once the output is sent.
    closing: bool,
}

/// The network stack.
pub struct Net {
    dev: NetDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    tcp_port: u16,
    address: Ipv4Address,
    prefix: u8,
    last_summary_ns: u64,
    /// Polls, and how many found the event channel pending.
    polls: u64,
    polls_pending: u64,
}

fn now() -> Instant {
    Instant::from_micros((time::now_ns() / 1000) as i64)
}

/// A socket buffer of `len` bytes in page frames of its own, not in the
/// heap (the heap is at most 8 MiB and the receiver needs it); the heap is
/// the fallback. Sockets are never dropped, so neither are their buffers.
fn socket_buffer(len: usize) -> tcp::SocketBuffer<'static> {
    match crate::pv::mm::alloc_contiguous(len.div_ceil(4096) as u64) {
        // SAFETY: the run of frames is mapped writable at consecutive
        // addresses, freshly allocated, and never freed: the slice is the
        // only reference to it for the rest of the domain's life.
        Some(f) => tcp::SocketBuffer::new(unsafe { core::slice::from_raw_parts_mut(f.va, len) }),
        None => tcp::SocketBuffer::new(vec![0u8; len]),
    }
}

fn new_tcp_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(socket_buffer(TCP_RX_BUF), socket_buffer(TCP_TX_BUF));
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

impl Net {
    /// Connects netfront and brings the interface up with the configured
    /// address, prefix and gateway, listening on the configured TCP port.
    pub fn start<T: Transport>(xs: &mut Client<T>, cfg: &Config) -> Result<Net, NetError> {
        let nf = Netfront::new(xs)?;
        let mut dev = NetDevice { nf };
        let mut icfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(dev.nf.mac)));
        // SAFETY: rdtsc is always available to a PV guest.
        icfg.random_seed = unsafe { core::arch::x86_64::_rdtsc() };
        let mut iface = Interface::new(icfg, &mut dev, now());
        let mut net = Net {
            dev,
            iface: {
                iface.update_ip_addrs(|a| a.clear());
                iface
            },
            sockets: SocketSet::new(Vec::new()),
            conns: Vec::new(),
            tcp_port: cfg.port,
            address: cfg.address,
            prefix: cfg.prefix,
            last_summary_ns: time::now_ns(),
            polls: 0,
            polls_pending: 0,
        };
        net.apply(cfg);
        Ok(net)
    }

    /// Applies a (new) configuration: address, prefix, gateway, port.
    pub fn apply(&mut self, cfg: &Config) {
        self.address = cfg.address;
        self.prefix = cfg.prefix;
        let (addr, prefix) = (cfg.address, cfg.prefix);
        self.iface.update_ip_addrs(|a| {
            a.clear();
            let _ = a.push(IpCidr::new(addr.into(), prefix));
        });
        self.iface.routes_mut().remove_default_ipv4_route();
        if let Some(gw) = cfg.gateway {
            let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
        }
        if cfg.port != self.tcp_port {
            self.tcp_port = cfg.port;
            // Listeners on the old port are closed; new ones open below.
            for c in self.conns.iter().filter(|c| c.id.is_none()) {
                self.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            }
        }
        self.ensure_listener();
        info!(
            "net: interface {}/{} gw {:?}, TCP port {}",
            cfg.address, cfg.prefix, cfg.gateway, cfg.port
        );
    }

    /// The event channel to wait on (None while netfront is disconnected).
    pub fn port(&self) -> Option<u32> {
        self.dev.nf.port()
    }

    /// Handles a watch event whose token is [`netfront::WATCH_TOKEN`].
    pub fn on_watch<T: Transport>(&mut self, xs: &mut Client<T>) {
        if self.dev.nf.on_backend_event(xs) && self.dev.nf.is_connected() {
            // A fresh connection (the toolstack may have given a new MAC).
            // TCP connections survive if their peers retransmit in time.
            let mac = HardwareAddress::Ethernet(EthernetAddress(self.dev.nf.mac));
            self.iface.set_hardware_addr(mac);
            info!("net: netfront reconnected");
        }
    }

    fn ensure_listener(&mut self) {
        let port = self.tcp_port;
        let mut listening = 0;
        for c in &self.conns {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            if c.id.is_none() && !c.closing {
                if !s.is_open() {
                    if let Err(e) = s.listen(port) {
                        warn!("net: listen on {port}: {e}");
                        continue;
                    }
                }
                if s.state() == tcp::State::Listen {
                    listening += 1;
                }
            }
        }
        if listening == 0 && self.conns.len() < MAX_SOCKETS {
            let mut s = new_tcp_socket();
            if s.listen(port).is_ok() {
                let handle = self.sockets.add(s);
                self.conns.push(Conn {
                    handle,
                    id: None,
                    out: Vec::new(),
                    out_off: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    sendq: 0,
                    closing: false,
                });
            }
        }
    }

    fn service_sockets(&mut self, svc: &mut dyn Service, now_ms: u64) {
        for c in self.conns.iter_mut() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            // A connection is handed to the service once established (in
            // SYN-RECEIVED, may_recv() is still false).
            let established = matches!(s.state(), tcp::State::Established | tcp::State::CloseWait);
            if c.id.is_none() && !c.closing && established {
                c.out.clear();
                c.out_off = 0;
                c.bytes_in = 0;
                c.bytes_out = 0;
                c.sendq = 0;
                match svc.accept(now_ms) {
                    Some(id) => {
                        info!("net: connection {id} from {:?}", s.remote_endpoint());
                        c.id = Some(id);
                    }
                    None => {
                        info!(
                            "net: connection from {:?} refused (no receiver)",
                            s.remote_endpoint()
                        );
                        s.abort();
                        continue;
                    }
                }
            }
            let Some(id) = c.id else {
                if c.closing && !s.is_open() {
                    c.closing = false;
                }
                continue;
            };
            // input, unless the peer is not reading our output
            if c.out_off > 0 && c.out.len() - c.out_off < OUT_HIGH_WATER {
                c.out.drain(..c.out_off);
                c.out_off = 0;
            }
            while !c.closing && s.can_recv() && c.out.len() - c.out_off < OUT_HIGH_WATER {
                let out = &mut c.out;
                let r = s.recv(|buf| (buf.len(), (buf.len(), svc.on_bytes(id, buf, now_ms, out))));
                match r {
                    Ok((n, Ok(()))) => c.bytes_in += n as u64,
                    Ok((n, Err(()))) => {
                        c.bytes_in += n as u64;
                        c.closing = true;
                    }
                    Err(_) => break,
                }
            }
            if !c.closing && svc.poll_output(id, &mut c.out).is_err() {
                c.closing = true;
            }
            // output
            while c.out_off < c.out.len() && s.can_send() {
                match s.send_slice(&c.out[c.out_off..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.out_off += n;
                        c.bytes_out += n as u64;
                    }
                }
            }
            // The send queue shrank: the peer acknowledged output (it is alive even if it
            // sends nothing while it takes a large reply).
            let q = s.send_queue();
            if q < c.sendq {
                svc.peer_alive(id, now_ms);
            }
            c.sendq = q;
            if c.out_off < c.out.len() {
                log::debug!(
                    "net: connection {id}: {} B of output waiting, state {}, can_send {}, send queue {}",
                    c.out.len() - c.out_off,
                    s.state(),
                    s.can_send(),
                    s.send_queue()
                );
            }
            if c.out_off == c.out.len() {
                c.out.clear();
                c.out_off = 0;
                if c.out.capacity() > OUT_KEEP {
                    c.out = Vec::new();
                }
                if c.closing {
                    s.close();
                }
            }
            // the peer went away, or the connection failed
            if !s.may_recv() || !s.is_active() {
                if s.is_active() {
                    s.close();
                }
                if !s.is_open() || !s.may_recv() {
                    info!(
                        "net: connection {id} closed ({}): {} B in, {} B out",
                        s.state(),
                        c.bytes_in,
                        c.bytes_out
                    );
                    svc.on_close(id, now_ms);
                    c.id = None;
                    c.closing = s.is_open();
                    c.out.clear();
                    c.out_off = 0;
                }
            }
        }
    }

    /// One round of work: netfront, smoltcp, the service. Returns the Xen
    /// system time (ns) by which it must be called again at the latest.
    pub fn poll(&mut self, svc: &mut dyn Service) -> u64 {
        self.polls += 1;
        if let Some(p) = self.port() {
            if events::is_pending(p) {
                self.polls_pending += 1;
            }
            events::clear(p);
        }
        for _ in 0..64 {
            let t0 = time::now_ns();
            let ts = now();
            self.iface.poll(ts, &mut self.dev, &mut self.sockets);
            let t1 = time::now_ns();
            self.service_sockets(svc, time::uptime_ns() / 1_000_000);
            self.ensure_listener();
            let t2 = time::now_ns();
            // send what the service produced right away
            self.iface.poll(now(), &mut self.dev, &mut self.sockets);
            let more = self.dev.nf.kick();
            let t3 = time::now_ns();
            profile::add(&profile::STACK_NS, (t1 - t0) + (t3 - t2));
            profile::add(&profile::SOCKETS_NS, t2 - t1);
            if !more {
                break;
            }
        }
        // The service's timers (the dead-peer timeout) run after the bytes that arrived are
        // read: time the appliance spent elsewhere (publishing a page directory, a slow
        // xenstore transaction) must not count as the primary's silence.
        let now_ms = time::uptime_ns() / 1_000_000;
        let svc_deadline_ms = svc.timers(now_ms);
        let t = time::now_ns();
        if t - self.last_summary_ns >= 30_000_000_000 {
            self.last_summary_ns = t;
            let m = crate::pv::mm::report();
            info!(
                "net: {}; {} polls, {} with the channel pending; memory used {} KiB, free frames {} KiB",
                self.dev.nf.summary(),
                self.polls,
                self.polls_pending,
                m.used_kib,
                m.capacity_kib
            );
        }
        let mut deadline = match self.iface.poll_delay(now(), &self.sockets) {
            Some(d) => t + d.total_micros().saturating_mul(1000).min(1_000_000_000),
            None => t + 1_000_000_000,
        };
        if let Some(ms) = svc_deadline_ms {
            let at = t + ms.saturating_sub(now_ms).saturating_mul(1_000_000);
            deadline = deadline.min(at);
        }
        deadline
    }
}
