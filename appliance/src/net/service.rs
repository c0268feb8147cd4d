//! The service on the TCP connections: the epoch receiver
//! (`resilire_receiver::Receiver`) over a checkpoint store whose pages are
//! the appliance's own machine frames, its per-VM status in xenstore, and
//! the page directory of each committed image for dom0.
//!
//! Status per VM (name = the key's name under `resilire/config/keys/`):
//! `resilire/status/vms/<name>/{state, committed_epoch, epochs_committed,
//! bytes_received, last_heard_ms, pages, guest, last_error, pagedir}`; see
//! appliance/CONFIG.md.

use super::Service;
use crate::pv::{mm, time};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use log::{error, info, warn};
use resilire_appliance::config::{Config, STATUS_DIR};
use resilire_appliance::xenstore::{Client, Transport};
use resilire_boot::abi::PAGE_SIZE;
use resilire_receiver::{ConnId, EventKind, Level, Receiver, ReceiverConfig, VmKey, CONN_MEMORY};
use resilire_store::{FrameAllocator, PageLocation, Store};

/// Largest EPOCH chunk announced to primaries.
const MAX_CHUNK: u32 = resilire_proto_max_chunk();

const fn resilire_proto_max_chunk() -> u32 {
    1 << 20
}

/// Heap bytes the store's metadata may take per page of its budget: the page-object table
/// (48 bytes an object, grown by doubling), the content index and the images' page tables
/// (12 bytes a page). An estimate on the safe side of what `Store::memory_used` counts.
const STORE_HEAP_PER_PAGE: usize = 112;
/// Heap kept free for everything else: smoltcp, xenstore, status strings, events, page
/// directories' bookkeeping.
const HEAP_RESERVE: usize = 1 << 20;

/// The store's frames: page frames of the appliance (mm's allocator). A
/// frame is named by its PFN inside the appliance; the number published in
/// page directories is its machine frame number, which is what dom0 maps.
pub struct ApplianceFrames;

impl FrameAllocator for ApplianceFrames {
    type Frame = u64;

    fn alloc(&mut self) -> Option<u64> {
        mm::alloc_frame().map(|f| f.pfn)
    }

    fn free(&mut self, pfn: u64) {
        mm::free_frame(mm::Frame {
            pfn,
            mfn: 0,
            va: (pfn << 12) as *mut u8,
        });
    }

    fn data(&self, pfn: u64) -> &[u8; PAGE_SIZE] {
        // SAFETY: `pfn` came from `alloc` and is not freed while the store
        // holds it; every frame of the domain is mapped at pfn << 12.
        unsafe { &*((pfn << 12) as *const [u8; PAGE_SIZE]) }
    }

    fn data_mut(&mut self, pfn: u64) -> &mut [u8; PAGE_SIZE] {
        // SAFETY: as in `data`; the store is the frame's only user and
        // borrows it through `&mut self`.
        unsafe { &mut *((pfn << 12) as *mut [u8; PAGE_SIZE]) }
    }

    fn frame_number(&self, pfn: u64) -> u64 {
        mm::pfn_to_mfn(pfn)
    }
}

/// A published page directory: its frames (owned) and what it describes.
struct PageDir {
    frames: Vec<mm::Frame>,
    epoch: u64,
}

/// The receiver and its xenstore publication.
pub struct Receiving {
    rx: Option<Receiver<ApplianceFrames>>,
    budget_mib: u32,
    /// Last values written per VM and key (only changes are written).
    written: BTreeMap<(String, &'static str), String>,
    dirs: BTreeMap<u64, PageDir>,
    /// One zero page that directories name for all-zero pages.
    zero: Option<mm::Frame>,
    /// VMs whose image changed (a commit) since the last publication.
    dirty_dirs: Vec<u64>,
    /// Something changed that the status should show.
    status_dirty: bool,
    last_status_ns: u64,
    /// Per connection: (accepted at ns, ns spent in the receiver, bytes) — the profile logged
    /// when it closes (is the receiver the bottleneck?).
    profile: BTreeMap<u64, (u64, u64, u64, (u64, u64, u64))>,
    /// ns spent publishing page directories since the last connection closed.
    publish_ns: u64,
}

fn now_ms() -> u64 {
    time::uptime_ns() / 1_000_000
}

fn keys_of(cfg: &Config) -> Vec<VmKey> {
    cfg.keys
        .iter()
        .map(|k| VmKey {
            name: k.vm_id.clone(),
            key: k.key,
        })
        .collect()
}

impl Receiving {
    /// Nothing configured yet.
    pub fn new() -> Receiving {
        Receiving {
            rx: None,
            budget_mib: 0,
            written: BTreeMap::new(),
            dirs: BTreeMap::new(),
            zero: None,
            dirty_dirs: Vec::new(),
            status_dirty: true,
            last_status_ns: 0,
            profile: BTreeMap::new(),
            publish_ns: 0,
        }
    }

    /// Applies the configuration: creates the receiver (store budget from
    /// `memory-budget-mib`) or updates its keys.
    pub fn configure<T: Transport>(&mut self, cfg: &Config, _xs: &mut Client<T>) {
        let keys = keys_of(cfg);
        match self.rx.as_mut() {
            Some(rx) => {
                if let Err(e) = rx.set_keys(&keys, now_ms()) {
                    error!("receiver: keys refused: {e}");
                }
                if cfg.memory_budget_mib != self.budget_mib {
                    warn!(
                        "receiver: memory-budget-mib changed to {} MiB; applies at the next restart (now {} MiB)",
                        cfg.memory_budget_mib, self.budget_mib
                    );
                }
            }
            None => {
                let budget = cfg.memory_budget_mib as usize * 1024 * 1024;
                let store = Store::new(ApplianceFrames, budget);
                let mut material = [0u8; 32];
                // Differs at every boot: the TSC and Xen's system time.
                // SAFETY: rdtsc is always available to a PV guest.
                let tsc = unsafe { core::arch::x86_64::_rdtsc() };
                material[..8].copy_from_slice(&tsc.to_le_bytes());
                material[8..16].copy_from_slice(&time::now_ns().to_le_bytes());
                // The protocol's largest EPOCH chunk (1 MiB): the shim does not
                // yet split epochs by WELCOME's max_chunk.
                // The heap holds the store's metadata and each connection's buffers (bounded
                // by CONN_MEMORY): connections are admitted at HELLO only while the heap set
                // aside for them has room, and while the heap really has it free.
                let (heap, _) = mm::heap_stats();
                let store_meta = (budget / PAGE_SIZE) * STORE_HEAP_PER_PAGE;
                let conn_limit = heap.saturating_sub(store_meta + HEAP_RESERVE);
                let rcfg = ReceiverConfig {
                    boot_material: material,
                    max_chunk: MAX_CHUNK,
                    conn_memory: CONN_MEMORY,
                    conn_memory_limit: conn_limit.max(1),
                    // A primary is declared dead (its connection closed, its epoch in progress
                    // discarded) after 15 s without a byte from it and without it taking any
                    // of our output. 5 s (the receiver's default) cut healthy connections in
                    // the TCG lab, where one TCP retransmission backoff can stall that long;
                    // failover decisions are the guard's, from the status, not this timer.
                    dead_peer_ms: 15_000,
                    ..ReceiverConfig::default()
                };
                info!(
                    "receiver: heap {} KiB: up to {} KiB for the store's metadata, {} KiB for connections ({} at up to {} KiB each)",
                    heap / 1024,
                    store_meta / 1024,
                    conn_limit / 1024,
                    conn_limit / CONN_MEMORY,
                    CONN_MEMORY / 1024
                );
                if conn_limit < CONN_MEMORY {
                    warn!("receiver: the heap leaves no room for a connection: primaries will be refused (NO_MEMORY); lower memory-budget-mib or give the appliance more memory");
                }
                match Receiver::new(store, &keys, rcfg) {
                    Ok(rx) => {
                        info!(
                            "receiver: ready, store budget {} MiB, {} VM key(s)",
                            cfg.memory_budget_mib,
                            keys.len()
                        );
                        self.rx = Some(rx);
                        self.budget_mib = cfg.memory_budget_mib;
                    }
                    Err(e) => error!("receiver: {e}"),
                }
            }
        }
        self.status_dirty = true;
    }

    fn drain_events(&mut self) {
        let Some(rx) = self.rx.as_mut() else { return };
        for ev in rx.take_events() {
            if let (EventKind::Committed { .. }, Some(vm)) = (&ev.kind, ev.vm) {
                if !self.dirty_dirs.contains(&vm) {
                    self.dirty_dirs.push(vm);
                }
            }
            self.status_dirty = true;
            match ev.level() {
                Level::Warn => warn!("receiver: {ev}"),
                Level::Info => info!("receiver: {ev}"),
                Level::Debug => log::debug!("receiver: {ev}"),
            }
        }
    }

    /// Publishes what changed after a round of network work: page
    /// directories of newly committed images and the per-VM status (at
    /// once after a change of state, otherwise at most once a second).
    pub fn after_poll<T: Transport>(&mut self, xs: &mut Client<T>) {
        self.drain_events();
        for vm in core::mem::take(&mut self.dirty_dirs) {
            let t0 = time::now_ns();
            self.publish_dir(xs, vm);
            self.publish_ns += time::now_ns() - t0;
        }
        let t = time::now_ns();
        if self.status_dirty || t.saturating_sub(self.last_status_ns) >= 1_000_000_000 {
            self.publish(xs);
        }
    }

    /// Writes the per-VM status (only values that changed).
    pub fn publish<T: Transport>(&mut self, xs: &mut Client<T>) {
        self.status_dirty = false;
        self.last_status_ns = time::now_ns();
        let Some(rx) = self.rx.as_ref() else { return };
        let mut writes: Vec<(String, &'static str, String)> = Vec::new();
        let counters = rx.counters();
        let (heap, heap_free) = mm::heap_stats();
        let top = [
            ("frames_refused", format!("{}", counters.frames_refused)),
            ("requests_refused", format!("{}", counters.requests_refused)),
            ("no_memory_refusals", format!("{}", counters.no_memory)),
            ("heap_kib", format!("{}", heap / 1024)),
            ("heap_free_kib", format!("{}", heap_free / 1024)),
        ];
        for (k, v) in top {
            if self.written.get(&(String::new(), k)) != Some(&v) {
                writes.push((String::new(), k, v));
            }
        }
        for s in rx.status() {
            let name = s.name.to_string();
            let vals: [(&'static str, String); 10] = [
                ("state", s.state.as_str().to_string()),
                (
                    "committed_epoch",
                    s.committed_epoch
                        .map(|e| format!("{e}"))
                        .unwrap_or_default(),
                ),
                ("epochs_committed", format!("{}", s.epochs_committed)),
                ("bytes_received", format!("{}", s.bytes_received)),
                (
                    "last_heard_ms",
                    s.last_heard_ms.map(|e| format!("{e}")).unwrap_or_default(),
                ),
                ("pages", s.pages.map(|e| format!("{e}")).unwrap_or_default()),
                ("guest", s.guest_name.to_string()),
                ("last_error", s.last_error.unwrap_or("").to_string()),
                ("frames_refused", format!("{}", s.frames_refused)),
                ("requests_refused", format!("{}", s.requests_refused)),
            ];
            for (k, v) in vals {
                if self.written.get(&(name.clone(), k)) != Some(&v) {
                    writes.push((name.clone(), k, v));
                }
            }
        }
        if writes.is_empty() {
            return;
        }
        let r = xs.transaction(8, |xs, tx| {
            for (name, k, v) in &writes {
                if name.is_empty() {
                    xs.write(tx, &format!("{STATUS_DIR}/{k}"), v)?;
                } else {
                    xs.write(tx, &format!("{STATUS_DIR}/vms/{name}/{k}"), v)?;
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                for (name, k, v) in writes {
                    self.written.insert((name, k), v);
                }
            }
            Err(e) => warn!("receiver: status: {e}"),
        }
    }

    /// Builds and publishes VM `vm`'s page directory: frames holding the
    /// machine frame numbers of the committed image's pages in pfn order
    /// (512 little-endian u64 per frame), listed with the page count and the
    /// epoch in one xenstore transaction. The previous directory's frames are
    /// freed afterwards.
    fn publish_dir<T: Transport>(&mut self, xs: &mut Client<T>, vm: u64) {
        let t0 = time::now_ns();
        let Some(rx) = self.rx.as_mut() else { return };
        let Some(st) = rx.vm_status(vm) else { return };
        let (name, Some(epoch), Some(pages)) = (st.name.to_string(), st.committed_epoch, st.pages)
        else {
            return;
        };
        if self.zero.is_none() {
            self.zero = mm::alloc_frame().inspect(|f| {
                // SAFETY: a fresh frame, mapped writable, owned here for good.
                unsafe { core::ptr::write_bytes(f.va, 0, PAGE_SIZE) }
            });
        }
        let Some(zero) = self.zero else {
            error!("receiver: no frame left for the zero page");
            return;
        };
        // Pages kept compressed have no frame: give them frames first.
        let needs_frames = match rx.page_directory(vm) {
            Ok(mut it) => it.any(|l| matches!(l, PageLocation::Compressed)),
            Err(e) => {
                warn!("receiver: page directory of {name}: {e}");
                return;
            }
        };
        if needs_frames {
            if let Err(e) = rx.materialize(vm) {
                warn!("receiver: materialising {name}: {e}");
                return;
            }
        }
        let n_dir = (pages as usize).div_ceil(512);
        let mut frames = Vec::with_capacity(n_dir);
        for _ in 0..n_dir {
            match mm::alloc_frame() {
                Some(f) => frames.push(f),
                None => {
                    error!("receiver: no frame left for {name}'s page directory");
                    frames.into_iter().for_each(mm::free_frame);
                    return;
                }
            }
        }
        let mut i = 0usize;
        let it = match rx.page_directory(vm) {
            Ok(it) => it,
            Err(e) => {
                warn!("receiver: page directory of {name}: {e}");
                frames.into_iter().for_each(mm::free_frame);
                return;
            }
        };
        for loc in it {
            let mfn = match loc {
                PageLocation::Zero => zero.mfn,
                PageLocation::Frame(n) => n,
                PageLocation::Compressed => zero.mfn, // materialised above; never here
            };
            if i / 512 >= frames.len() {
                break;
            }
            // SAFETY: directory frames are fresh, mapped writable, owned here.
            unsafe {
                (frames[i / 512].va as *mut u64)
                    .add(i % 512)
                    .write(mfn.to_le())
            };
            i += 1;
        }
        // zero the unused tail of the last frame
        while i < n_dir * 512 {
            // SAFETY: as above.
            unsafe { (frames[i / 512].va as *mut u64).add(i % 512).write(0) };
            i += 1;
        }
        let list: Vec<String> = frames.iter().map(|f| format!("{:#x}", f.mfn)).collect();
        let list = list.join(",");
        let base = format!("{STATUS_DIR}/vms/{name}");
        let r = xs.transaction(8, |xs, tx| {
            xs.write(tx, &format!("{base}/pagedir"), &list)?;
            xs.write(tx, &format!("{base}/pages"), &format!("{pages}"))?;
            xs.write(tx, &format!("{base}/committed_epoch"), &format!("{epoch}"))
        });
        match r {
            Ok(()) => {
                self.written
                    .insert((name.clone(), "pages"), format!("{pages}"));
                self.written
                    .insert((name.clone(), "committed_epoch"), format!("{epoch}"));
                if let Some(old) = self.dirs.insert(vm, PageDir { frames, epoch }) {
                    log::debug!("receiver: {name}: directory of epoch {} freed", old.epoch);
                    old.frames.into_iter().for_each(mm::free_frame);
                }
                info!(
                    "receiver: {name}: page directory of epoch {epoch} published ({pages} pages, {n_dir} directory frame(s), {} ms)",
                    (time::now_ns() - t0) / 1_000_000
                );
            }
            Err(e) => {
                warn!("receiver: publishing {name}'s page directory: {e}");
                frames.into_iter().for_each(mm::free_frame);
            }
        }
    }
}

impl Service for Receiving {
    fn accept(&mut self, now_ms: u64) -> Option<u64> {
        let id = self.rx.as_mut().map(|rx| rx.accept(now_ms).0)?;
        self.profile
            .insert(id, (time::now_ns(), 0, 0, super::profile::snapshot()));
        self.publish_ns = 0;
        Some(id)
    }

    fn on_bytes(
        &mut self,
        conn: u64,
        data: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ()> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(());
        };
        let t0 = time::now_ns();
        rx.set_heap_free(Some(mm::heap_stats().1));
        let r = rx.on_bytes(ConnId(conn), data, now_ms, out).map_err(|e| {
            info!("receiver: connection {conn} ends: {e}");
        });
        if let Some(p) = self.profile.get_mut(&conn) {
            p.1 += time::now_ns() - t0;
            p.2 += data.len() as u64;
        }
        r
    }

    fn poll_output(&mut self, conn: u64, out: &mut Vec<u8>) -> Result<(), ()> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(());
        };
        rx.poll_output(ConnId(conn), out).map_err(|e| {
            info!("receiver: connection {conn} ends: {e}");
        })
    }

    fn peer_alive(&mut self, conn: u64, now_ms: u64) {
        if let Some(rx) = self.rx.as_mut() {
            rx.peer_alive(ConnId(conn), now_ms);
        }
    }

    fn on_close(&mut self, conn: u64, _now_ms: u64) {
        if let Some(rx) = self.rx.as_mut() {
            rx.on_close(ConnId(conn));
        }
        if let Some((start, busy, bytes, (idle0, stack0, sock0))) = self.profile.remove(&conn) {
            let wall = (time::now_ns() - start).max(1);
            let (idle1, stack1, sock1) = super::profile::snapshot();
            let pct = |ns: u64| ns * 100 / wall;
            if bytes >= 1 << 20 {
                info!(
                    "receiver: profile of connection {conn}: {} KiB in {} ms; receiver (decrypt, decode, commit) busy {} ms = {}% ({} KiB/s while busy); \
                     appliance idle {}%, smoltcp+netfront {}%, socket loop (incl. receiver) {}%, page directories {}%, other (xenstore, status) the rest",
                    bytes / 1024,
                    wall / 1_000_000,
                    busy / 1_000_000,
                    pct(busy),
                    bytes * 1_000_000_000 / 1024 / busy.max(1),
                    pct(idle1 - idle0),
                    pct(stack1 - stack0),
                    pct(sock1 - sock0),
                    pct(self.publish_ns)
                );
            }
        }
    }

    fn timers(&mut self, now_ms: u64) -> Option<u64> {
        self.rx.as_mut().and_then(|rx| rx.poll_timeouts(now_ms))
    }
}
