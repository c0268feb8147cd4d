//! Typed wrappers around Xen hypercalls (x86_64 PV).
//!
//! A PV guest calls hypercall `n` by calling offset `n * 32` of the hypercall
//! page, with arguments in rdi, rsi, rdx, r10, r8 and the result in rax. The
//! stubs use `syscall`, which clobbers rcx and r11; a debug Xen also scribbles
//! over the argument registers, so they are all declared clobbered.
//!
//! All `unsafe` about the hypercall ABI is in this module. Wrappers whose
//! arguments are plain values or Rust slices are safe; the ones that take raw
//! addresses (`update_va_mapping`, `mmu_update`) stay `unsafe` because a wrong
//! page-table write can break memory safety of the whole guest.

use crate::abi::{self, hc, MmuUpdate, SchedPoll};
use core::arch::asm;

/// A negative Xen errno (e.g. -22 = EINVAL), as returned by a failed hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenError(pub i64);

impl core::fmt::Display for XenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "xen error {}", self.0)
    }
}

fn check(rc: i64) -> Result<i64, XenError> {
    if rc < 0 {
        Err(XenError(rc))
    } else {
        Ok(rc)
    }
}

/// Raw five-argument hypercall.
///
/// # Safety
/// The arguments must be valid for hypercall `nr`: pointers must point to
/// memory of the right type and size that stays valid during the call.
#[inline]
pub unsafe fn hypercall(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> i64 {
    debug_assert!(nr < 128);
    let target = core::ptr::addr_of!(crate::entry::hypercall_page) as usize + nr * 32;
    let ret: i64;
    asm!(
        "call {target}",
        target = in(reg) target,
        inlateout("rdi") a1 => _,
        inlateout("rsi") a2 => _,
        inlateout("rdx") a3 => _,
        inlateout("r10") a4 => _,
        inlateout("r8") a5 => _,
        lateout("rax") ret,
        lateout("rcx") _,
        lateout("r11") _,
    );
    ret
}

/// Writes bytes to the hypervisor console (`CONSOLEIO_write`). Only dom0's
/// writes reach the serial line on a release build of Xen.
pub fn console_write(bytes: &[u8]) -> Result<(), XenError> {
    // SAFETY: the buffer is a live Rust slice of `len` bytes, read-only for Xen.
    check(unsafe {
        hypercall(
            hc::CONSOLE_IO,
            abi::CONSOLEIO_WRITE,
            bytes.len(),
            bytes.as_ptr() as usize,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// Shuts the domain down with `reason` (`abi::shutdown::*`). Returns only if
/// Xen refused (or, for SUSPEND, when the domain is resumed).
pub fn sched_shutdown(reason: u32) -> Result<(), XenError> {
    let arg = reason;
    // SAFETY: `struct sched_shutdown` is a single unsigned int, `arg` lives on the stack.
    check(unsafe {
        hypercall(
            hc::SCHED_OP,
            abi::schedop::SHUTDOWN,
            &arg as *const u32 as usize,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// Gives up the CPU.
pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no argument.
    unsafe { hypercall(hc::SCHED_OP, abi::schedop::YIELD, 0, 0, 0, 0) };
}

/// Blocks until one of `ports` is pending or Xen system time reaches
/// `deadline_ns` (0 = no deadline). Returns immediately if one is already
/// pending. Event delivery (upcalls) may stay masked.
pub fn sched_poll(ports: &[u32], deadline_ns: u64) -> Result<(), XenError> {
    let poll = SchedPoll {
        ports: ports.as_ptr(),
        nr_ports: ports.len() as u32,
        timeout: deadline_ns,
    };
    // SAFETY: `poll` and the port slice are live for the duration of the call.
    check(unsafe {
        hypercall(
            hc::SCHED_OP,
            abi::schedop::POLL,
            &poll as *const SchedPoll as usize,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// Notifies the remote end of event channel `port`.
pub fn evtchn_send(port: u32) -> Result<(), XenError> {
    let arg = port;
    // SAFETY: `struct evtchn_send` is a single u32 that lives on the stack.
    check(unsafe {
        hypercall(
            hc::EVENT_CHANNEL_OP,
            abi::EVTCHNOP_SEND,
            &arg as *const u32 as usize,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

/// Applies a batch of checked page-table writes.
///
/// # Safety
/// The updates change the guest's page tables: the caller must make sure no
/// live Rust reference points into memory whose mapping is removed or changed.
pub unsafe fn mmu_update(reqs: &[MmuUpdate]) -> Result<(), XenError> {
    let mut done: u32 = 0;
    let rc = hypercall(
        hc::MMU_UPDATE,
        reqs.as_ptr() as usize,
        reqs.len(),
        &mut done as *mut u32 as usize,
        abi::DOMID_SELF as usize,
        0,
    );
    check(rc)?;
    if done as usize != reqs.len() {
        return Err(XenError(-5));
    }
    Ok(())
}

/// Replaces the PTE that maps virtual address `va` with `pte` (0 unmaps it).
///
/// # Safety
/// As for [`mmu_update`]: nothing may rely on the old mapping of `va`.
pub unsafe fn update_va_mapping(va: u64, pte: u64, flags: usize) -> Result<(), XenError> {
    check(hypercall(
        hc::UPDATE_VA_MAPPING,
        va as usize,
        pte as usize,
        flags,
        0,
        0,
    ))
    .map(|_| ())
}

/// Raw grant-table operation.
///
/// # Safety
/// `uop` must point to `count` structures of the type `cmd` expects.
pub unsafe fn grant_table_op(cmd: usize, uop: *mut u8, count: u32) -> Result<i64, XenError> {
    check(hypercall(
        hc::GRANT_TABLE_OP,
        cmd,
        uop as usize,
        count as usize,
        0,
        0,
    ))
}

/// Xen's version as (major, minor) (`XENVER_version`).
pub fn xen_version() -> (u32, u32) {
    // SAFETY: XENVER_version (0) takes no buffer.
    let v = unsafe { hypercall(hc::XEN_VERSION, 0, 0, 0, 0, 0) } as u32;
    (v >> 16, v & 0xffff)
}

/// Allocates a fresh event channel of this domain that domain `remote` may
/// bind to (`EVTCHNOP_alloc_unbound`); returns the local port. Netfront
/// uses it for the channel it shares with its backend.
pub fn evtchn_alloc_unbound(remote: u16) -> Result<u32, XenError> {
    /// `struct evtchn_alloc_unbound` (xen/event_channel.h): dom, remote_dom
    /// (domid_t each), then the OUT port.
    #[repr(C)]
    struct AllocUnbound {
        dom: u16,
        remote_dom: u16,
        port: u32,
    }
    const EVTCHNOP_ALLOC_UNBOUND: usize = 6;
    let mut arg = AllocUnbound {
        dom: abi::DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    // SAFETY: `arg` is a live `struct evtchn_alloc_unbound` on the stack.
    check(unsafe {
        hypercall(
            hc::EVENT_CHANNEL_OP,
            EVTCHNOP_ALLOC_UNBOUND,
            &mut arg as *mut AllocUnbound as usize,
            0,
            0,
            0,
        )
    })?;
    Ok(arg.port)
}

/// Closes a local event channel port (`EVTCHNOP_close`).
pub fn evtchn_close(port: u32) -> Result<(), XenError> {
    const EVTCHNOP_CLOSE: usize = 3;
    let arg = port;
    // SAFETY: `struct evtchn_close` is a single u32 that lives on the stack.
    check(unsafe {
        hypercall(
            hc::EVENT_CHANNEL_OP,
            EVTCHNOP_CLOSE,
            &arg as *const u32 as usize,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}
