//! What the appliance does once booted: configuration from xenstore, status
//! to xenstore, and `xl shutdown` / `xl reboot` handling (domU), or a
//! self-test of the Xen facilities when booted as dom0.

use crate::println;
use crate::pv::xs_ring::XsRing;
use crate::pv::{events, gnttab, logger, mm, time};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use log::{debug, error, info, warn};
use resilire_appliance::config::{self, Config, State, CONFIG_DIR, STATUS_DIR};
use resilire_appliance::control::{self, ShutdownRequest};
use resilire_appliance::xenstore::{Client, NO_TX};
use resilire_appliance::xs_wire::XsError;
use resilire_appliance::VERSION;
use resilire_boot::abi::{shutdown, XenstoreDomainInterface};
use resilire_boot::hypercall;
use resilire_boot::start_info::BootInfo;

const NS_PER_S: u64 = 1_000_000_000;
/// How often uptime and memory figures are refreshed in the status.
const STATUS_PERIOD_NS: u64 = 5 * NS_PER_S;
/// Delay before re-reading the configuration after a transient failure.
const CONFIG_RETRY_NS: u64 = 2 * NS_PER_S;

fn shutdown_now(reason: u32) -> ! {
    loop {
        let _ = hypercall::sched_shutdown(reason);
    }
}

/// dom0 smoke test: exercises heap, frames, time, polling and grants, prints
/// a verdict on the hypervisor console and powers off.
pub fn dom0_smoke() -> ! {
    let mut ok = true;
    // heap
    let v: Vec<u64> = (0..131_072u64).collect();
    let sum: u64 = v.iter().sum();
    ok &= sum == 131_072 * 131_071 / 2;
    drop(v);
    // frames: take every free frame, fill it, and chain it to the previous
    // one through its first word (no heap needed for any memory size); then
    // walk the chain, check the pattern and give every frame back
    let before = mm::report();
    let mut last: Option<mm::Frame> = None;
    let mut n = 0u64;
    while let Some(f) = mm::alloc_frame() {
        let prev = last.map_or(u64::MAX, |p| p.pfn);
        // SAFETY: the frame is mapped writable and ours until freed.
        unsafe {
            core::ptr::write_bytes(f.va, 0xa5, 4096);
            (f.va as *mut u64).write(prev);
        }
        last = Some(f);
        n += 1;
    }
    let mut freed = 0u64;
    let mut intact = true;
    while let Some(f) = last {
        // SAFETY: every frame of the chain is still allocated and mapped.
        let prev = unsafe {
            intact &= *f.va.add(8) == 0xa5 && *f.va.add(4095) == 0xa5;
            (f.va as *const u64).read()
        };
        mm::free_frame(f);
        freed += 1;
        last = (prev != u64::MAX).then(|| mm::Frame {
            pfn: prev,
            mfn: 0,
            va: (prev << 12) as *mut u8,
        });
    }
    ok &= intact && freed == n && mm::report().capacity_kib == before.capacity_kib;
    info!("frames: allocated, wrote, checked and freed all {n} free frames ({} KiB), intact: {intact}", n * 4);
    // time and SCHEDOP_poll with a deadline
    let t0 = time::now_ns();
    time::sleep_ns(200_000_000);
    let dt = time::now_ns() - t0;
    ok &= (200_000_000..2_000_000_000).contains(&dt);
    info!(
        "time: slept 200 ms by SCHEDOP_poll, measured {} ms",
        dt / 1_000_000
    );
    // grants
    match mm::alloc_frame() {
        Some(f) => match gnttab::grant_access(0, f.mfn, true) {
            Ok(gref) => {
                let ended = gnttab::end_access(gref).is_ok();
                ok &= ended;
                info!(
                    "grant: granted mfn {:#x} as ref {gref}, revoked: {ended}",
                    f.mfn
                );
                mm::free_frame(f);
            }
            Err(e) => {
                ok = false;
                error!("grant: {e}");
            }
        },
        None => ok = false,
    }
    let m = mm::report();
    info!(
        "capacity: total {} KiB, used {} KiB, free for storage {} KiB",
        m.total_kib, m.used_kib, m.capacity_kib
    );
    println!("RESILIRE-SMOKE: {}", if ok { "PASS" } else { "FAIL" });
    shutdown_now(shutdown::POWEROFF)
}

struct App {
    xs: Client<XsRing>,
    port: u32,
    state: State,
    reason: String,
    cfg: Option<Config>,
    boot_to_ready_ms: Option<u64>,
    status_warned: bool,
    /// When to read the configuration again after a transient xenstore failure.
    config_retry_at: Option<u64>,
    /// Whether the effective-config status keys may exist (and must be
    /// removed when the configuration becomes invalid).
    effective_published: bool,
    /// The network stack, up once a valid configuration arrived.
    net: Option<crate::net::Net>,
    /// What runs on the TCP connections.
    service: crate::net::service::Receiving,
}

/// domU main loop; never returns (ends with SCHEDOP_shutdown).
pub fn run(bi: &BootInfo) -> ! {
    let (mfn, port) = bi.store.expect("a domU has a xenstore ring");
    // SAFETY: the xenstore page is in the boot mapping for the domain's life.
    let ring = unsafe { XsRing::new(mm::mfn_to_va(mfn) as *mut XenstoreDomainInterface, port) };
    let mut app = App {
        xs: Client::new(ring),
        port,
        state: State::Booting,
        reason: String::new(),
        cfg: None,
        boot_to_ready_ms: None,
        status_warned: false,
        config_retry_at: None,
        // a new domain starts with an empty home path
        effective_published: false,
        net: None,
        service: crate::net::service::Receiving::new(),
    };
    let domid = app
        .xs
        .read(NO_TX, "domid")
        .unwrap_or_else(|e| panic!("xenstore: reading domid: {e}"));
    let home = app
        .xs
        .domain_path(domid.parse().unwrap_or(0))
        .unwrap_or_default();
    info!("xenstore: connected, domain {domid}, home {home}");
    if let Err(e) = control::publish_booting(&mut app.xs, VERSION) {
        error!("status: cannot write {STATUS_DIR}: {e}");
    }
    if let Err(e) = app.xs.watch(CONFIG_DIR, "config") {
        error!("xenstore: cannot watch {CONFIG_DIR}: {e}");
    }
    if let Err(e) = app.xs.watch("control/shutdown", "shutdown") {
        error!("xenstore: cannot watch control/shutdown: {e}");
    }
    let mut next_status = time::now_ns() + STATUS_PERIOD_NS;
    loop {
        events::clear(app.port);
        if let Err(e) = app.xs.poll() {
            error!("xenstore: {e}");
        }
        let (mut reconfigure, mut check_shutdown, mut net_event) = (false, false, false);
        while let Some(ev) = app.xs.next_event() {
            debug!("watch {} fired on {}", ev.token, ev.path);
            match ev.token.as_str() {
                "config" => reconfigure = true,
                "shutdown" => check_shutdown = true,
                crate::net::netfront::WATCH_TOKEN => net_event = true,
                _ => {}
            }
        }
        if check_shutdown {
            if let Some(reason) = app.shutdown_request() {
                app.stop(reason);
            }
        }
        if app.config_retry_at.is_some_and(|t| time::now_ns() >= t) {
            reconfigure = true;
        }
        if reconfigure && app.load_config() {
            app.publish_status();
            app.net_config();
        }
        if net_event {
            if let Some(n) = app.net.as_mut() {
                n.on_watch(&mut app.xs);
            }
        }
        let net_deadline = app.net_poll();
        let now = time::now_ns();
        if now >= next_status {
            app.publish_periodic();
            app.service.publish(&mut app.xs);
            next_status = now + STATUS_PERIOD_NS;
        }
        let deadline = app
            .config_retry_at
            .map_or(next_status, |t| t.min(next_status))
            .min(net_deadline);
        let t_wait = time::now_ns();
        match app.net.as_ref().and_then(|n| n.port()) {
            Some(p) => events::wait(&[app.port, p], deadline),
            None => events::wait(&[app.port], deadline),
        }
        crate::net::profile::add(&crate::net::profile::IDLE_NS, time::now_ns() - t_wait);
    }
}

impl App {
    /// Reads and validates the configuration; returns whether the state was
    /// updated (false after a transient xenstore failure, retried later).
    fn load_config(&mut self) -> bool {
        self.config_retry_at = None;
        let (state, reason, cfg) = match control::fetch_config(&mut self.xs) {
            Err(e @ (XsError::Timeout | XsError::Transport(_) | XsError::Protocol(_))) => {
                // Not a configuration problem: keep the current state.
                warn!("config: xenstore failed while reading {CONFIG_DIR}, retrying in 2 s: {e}");
                self.config_retry_at = Some(time::now_ns() + CONFIG_RETRY_NS);
                return false;
            }
            Err(e) => (
                State::Misconfigured,
                format!("cannot read {CONFIG_DIR}: {e}"),
                None,
            ),
            Ok(raw) => match control::evaluate(&raw, mm::report().capacity_kib) {
                Ok(cfg) => (State::Ready, String::new(), Some(cfg)),
                Err(reason) => (State::Misconfigured, reason, None),
            },
        };
        if let Some(c) = &cfg {
            logger::set_level(c.log_level);
            info!(
                "config: ready: {}/{} gw {} port {} budget {} MiB, {} primary key(s), log {}",
                c.address,
                c.prefix,
                c.gateway
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "none".into()),
                c.port,
                c.memory_budget_mib,
                c.keys.len(),
                c.log_level.as_str()
            );
            if self.boot_to_ready_ms.is_none() {
                self.boot_to_ready_ms = Some(time::uptime_ns() / 1_000_000);
            }
        } else {
            warn!("config: misconfigured, refusing work: {reason}");
        }
        self.state = state;
        self.reason = reason;
        self.cfg = cfg;
        true
    }

    /// Brings the network up (first valid configuration) or applies a new one.
    fn net_config(&mut self) {
        let Some(cfg) = self.cfg.as_ref() else { return };
        self.service.configure(cfg, &mut self.xs);
        match self.net.as_mut() {
            Some(n) => n.apply(cfg),
            None => match crate::net::Net::start(&mut self.xs, cfg) {
                Ok(n) => self.net = Some(n),
                Err(e) => error!("net: netfront: {e}"),
            },
        }
    }

    /// Polls the network; returns the time by which to poll it again.
    fn net_poll(&mut self) -> u64 {
        match self.net.as_mut() {
            Some(n) if self.state == State::Ready => {
                let d = n.poll(&mut self.service);
                self.service.after_poll(&mut self.xs);
                d
            }
            _ => u64::MAX,
        }
    }

    fn publish_status(&mut self) {
        let mut entries = config::status_entries(
            self.state,
            &self.reason,
            VERSION,
            mm::report(),
            time::uptime_ns() / NS_PER_S,
            self.cfg.as_ref(),
        );
        let has_cfg = self.cfg.is_some();
        if let Some(ms) = self.boot_to_ready_ms {
            entries.push(("boot_to_ready_ms", format!("{ms}")));
        }
        let r = control::publish(&mut self.xs, &entries, !has_cfg && self.effective_published);
        if r.is_ok() {
            self.effective_published = has_cfg;
        }
        match r {
            Ok(()) => info!(
                "status: {}{}{}",
                self.state.as_str(),
                if self.reason.is_empty() { "" } else { ": " },
                self.reason
            ),
            Err(e) if !self.status_warned => {
                self.status_warned = true;
                error!("status: cannot write {STATUS_DIR} (dom0 must create it writable for this domain): {e}");
            }
            Err(_) => {}
        }
    }

    fn publish_periodic(&mut self) {
        let m = mm::report();
        let up = time::uptime_ns() / NS_PER_S;
        let entries = [
            ("uptime_s", format!("{up}")),
            ("mem_used_kib", format!("{}", m.used_kib)),
            ("capacity_kib", format!("{}", m.capacity_kib)),
        ];
        if let Err(e) = control::publish(&mut self.xs, &entries, false) {
            debug!("status refresh: {e}");
        }
    }

    /// Reads and acknowledges control/shutdown; returns the SHUTDOWN_* reason
    /// if the toolstack asked for one the appliance honours.
    fn shutdown_request(&mut self) -> Option<u32> {
        match control::take_shutdown_request(&mut self.xs) {
            Ok(None) => None,
            Ok(Some(ShutdownRequest::Poweroff)) => Some(shutdown::POWEROFF),
            Ok(Some(ShutdownRequest::Reboot)) => Some(shutdown::REBOOT),
            Ok(Some(ShutdownRequest::Unsupported(what))) => {
                warn!("control/shutdown: '{what}' is not supported yet, ignored");
                None
            }
            Err(e) => {
                error!("control/shutdown: {e}");
                None
            }
        }
    }

    fn stop(&mut self, reason: u32) -> ! {
        let what = if reason == shutdown::REBOOT {
            "reboot"
        } else {
            "poweroff"
        };
        info!("shutdown requested by the toolstack: {what}");
        self.state = State::Stopping;
        self.reason = format!("{what} requested");
        self.publish_status();
        println!("Resilire appliance stopped ({what})");
        shutdown_now(reason)
    }
}
