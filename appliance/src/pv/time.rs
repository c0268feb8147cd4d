//! Xen system time: nanoseconds since the hypervisor booted, computed from the
//! `vcpu_time_info` record of vCPU 0 in shared_info and the TSC.

use core::ptr::{addr_of, read_volatile};
use core::sync::atomic::{fence, AtomicU64, Ordering};
use resilire_boot::abi::VcpuTimeInfo;

use super::events;

static BOOT_NS: AtomicU64 = AtomicU64::new(0);
static LAST_NS: AtomicU64 = AtomicU64::new(0);

/// Current Xen system time in ns (0 before shared_info is mapped).
pub fn now_ns() -> u64 {
    let Some(si) = events::shared_info() else {
        return 0;
    };
    // SAFETY: shared_info is mapped for the life of the domain; Xen updates
    // the record concurrently, bracketed by an odd/even version number, so
    // every field is read with volatile loads and the copy retried until the
    // version is even and unchanged.
    let t = unsafe {
        let p = addr_of!((*si).vcpu_info[0].time);
        loop {
            let v1 = read_volatile(addr_of!((*p).version));
            fence(Ordering::Acquire);
            let t: VcpuTimeInfo = read_volatile(p);
            fence(Ordering::Acquire);
            let v2 = read_volatile(addr_of!((*p).version));
            if v1 == v2 && v1 & 1 == 0 {
                break t;
            }
        }
    };
    // SAFETY: rdtsc is always available to a PV guest (Xen may emulate it).
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let mut delta = tsc.wrapping_sub(t.tsc_timestamp);
    if t.tsc_shift >= 0 {
        delta <<= t.tsc_shift as u32;
    } else {
        delta >>= (-t.tsc_shift) as u32;
    }
    let ns = t
        .system_time
        .wrapping_add(((delta as u128 * t.tsc_to_system_mul as u128) >> 32) as u64);
    // Extrapolating from an older record can land slightly ahead of the next
    // record's value; never let the clock go backwards.
    LAST_NS.fetch_max(ns, Ordering::Relaxed).max(ns)
}

/// Records "now" as the appliance's boot time.
pub fn mark_boot() {
    BOOT_NS.store(now_ns(), Ordering::Relaxed);
}

/// Nanoseconds since [`mark_boot`].
pub fn uptime_ns() -> u64 {
    let b = BOOT_NS.load(Ordering::Relaxed);
    if b == 0 {
        0
    } else {
        now_ns().saturating_sub(b)
    }
}

/// Sleeps `ns` nanoseconds (SCHEDOP_poll on no port with a deadline).
pub fn sleep_ns(ns: u64) {
    let deadline = now_ns().saturating_add(ns);
    while now_ns() < deadline {
        events::wait(&[], deadline);
    }
}
