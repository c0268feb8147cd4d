//! Event channels, the 2-level ABI over shared_info.
//!
//! Waiting: the appliance uses `SCHEDOP_poll`, not upcalls. It is a
//! single-threaded run-to-completion loop: every wait is "until one of these
//! ports is pending or this deadline passes", which is exactly what
//! SCHEDOP_poll does inside Xen (the vCPU is descheduled, no busy wait).
//! Upcalls would need a callback entry point registered with
//! `HYPERVISOR_set_callbacks`, an interrupt-style context that returns with
//! the iret hypercall, and locking between handler and main loop, for no gain
//! here. Upcalls stay masked (`evtchn_upcall_mask` = 1) for the domain's life.
//!
//! The usual wake-up race is avoided by the caller's order of work: clear the
//! port's pending bit, check the ring, and only then poll; SCHEDOP_poll
//! returns at once if the port became pending in between.

use core::ptr::{addr_of_mut, write_volatile};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use resilire_boot::abi::SharedInfo;
use resilire_boot::hypercall;

static SHARED_INFO: AtomicPtr<SharedInfo> = AtomicPtr::new(core::ptr::null_mut());

/// The mapped shared_info page, once [`init`] ran.
pub fn shared_info() -> Option<*mut SharedInfo> {
    let p = SHARED_INFO.load(Ordering::Acquire);
    if p.is_null() {
        None
    } else {
        Some(p)
    }
}

/// Installs the mapping of shared_info and masks event upcalls.
///
/// # Safety
/// `si` must map this domain's shared_info page for the rest of its life.
pub unsafe fn init(si: *mut SharedInfo) {
    write_volatile(addr_of_mut!((*si).vcpu_info[0].evtchn_upcall_mask), 1);
    SHARED_INFO.store(si, Ordering::Release);
}

fn word(si: *mut SharedInfo, port: u32, mask: bool) -> &'static AtomicU64 {
    let idx = (port / 64) as usize;
    // SAFETY: shared_info is mapped for good; the words are 8-byte aligned
    // and Xen updates them with atomic operations, so they are accessed as
    // AtomicU64 here as well.
    unsafe {
        let p = if mask {
            addr_of_mut!((*si).evtchn_mask[idx])
        } else {
            addr_of_mut!((*si).evtchn_pending[idx])
        };
        AtomicU64::from_ptr(p)
    }
}

/// Masks `port` (no upcall would be sent for it; polling still sees it).
pub fn mask(port: u32) {
    if let Some(si) = shared_info() {
        word(si, port, true).fetch_or(1 << (port % 64), Ordering::SeqCst);
    }
}

/// True if `port` is pending (diagnostics).
pub fn is_pending(port: u32) -> bool {
    match shared_info() {
        Some(si) => word(si, port, false).load(Ordering::SeqCst) & (1 << (port % 64)) != 0,
        None => false,
    }
}

/// Clears the pending bit of `port`.
pub fn clear(port: u32) {
    if let Some(si) = shared_info() {
        word(si, port, false).fetch_and(!(1 << (port % 64)), Ordering::SeqCst);
    }
}

/// Notifies the other end of `port`.
pub fn notify(port: u32) {
    let _ = hypercall::evtchn_send(port);
}

/// Blocks until one of `ports` is pending or system time reaches
/// `deadline_ns`. Before time is available (no shared_info yet) it only
/// yields, so that it can never block forever.
pub fn wait(ports: &[u32], deadline_ns: u64) {
    if deadline_ns == 0 || shared_info().is_none() {
        hypercall::sched_yield();
        return;
    }
    if hypercall::sched_poll(ports, deadline_ns).is_err() {
        hypercall::sched_yield();
    }
}
