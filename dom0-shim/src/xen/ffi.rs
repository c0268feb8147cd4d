//! Raw declarations of the parts of libxenctrl (Xen 4.17) the shim uses.
//!
//! Hand-written rather than generated: a dozen items, and bindgen would pull
//! libclang into every build. Layouts are checked against the C headers'
//! sizes at compile time below.

#![allow(non_camel_case_types)]

use std::os::raw::{c_int, c_uint, c_ulong, c_void};

/// Opaque `xc_interface`.
#[repr(C)]
pub struct xc_interface {
    _private: [u8; 0],
}

/// `xc_hypercall_buffer_t`: bounce-buffer bookkeeping for memory that Xen
/// reads or writes during a hypercall (`xenctrl.h`).
#[repr(C)]
pub struct xc_hypercall_buffer {
    pub hbuf: *mut c_void,
    pub param_shadow: *mut xc_hypercall_buffer,
    pub dir: c_int,
    pub ubuf: *mut c_void,
    pub sz: usize,
}

/// `xen_domctl_getdomaininfo` (`xen/domctl.h`, interface version of 4.17).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct xc_domaininfo_t {
    pub domain: u16,
    pub pad1: u16,
    pub flags: u32,
    pub tot_pages: u64,
    pub max_pages: u64,
    pub outstanding_pages: u64,
    pub shr_pages: u64,
    pub paged_pages: u64,
    pub shared_info_frame: u64,
    pub cpu_time: u64,
    pub nr_online_vcpus: u32,
    pub max_vcpu_id: u32,
    pub ssidref: u32,
    pub handle: [u8; 16],
    pub cpupool: u32,
    pub gpaddr_bits: u8,
    pub pad2: [u8; 7],
    pub arch_config: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<xc_domaininfo_t>() == 112);

/// `xen_domctl_shadow_op_stats`.
#[repr(C)]
#[derive(Default)]
pub struct xc_shadow_op_stats_t {
    pub fault_count: u32,
    pub dirty_count: u32,
}

pub const XEN_DOMINF_DYING: u32 = 1 << 0;
pub const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
pub const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
pub const XEN_DOMINF_PAUSED: u32 = 1 << 3;
pub const XEN_DOMINF_HAP: u32 = 1 << 8;
pub const XEN_DOMINF_SHUTDOWN_SHIFT: u32 = 16;

pub const XEN_DOMCTL_SHADOW_OP_OFF: c_uint = 0;
pub const XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY: c_uint = 2;
pub const XEN_DOMCTL_SHADOW_OP_CLEAN: c_uint = 11;
pub const XEN_DOMCTL_SHADOW_OP_PEEK: c_uint = 12;

#[link(name = "xenctrl")]
extern "C" {
    pub fn xc_interface_open(
        logger: *mut c_void,
        dombuild_logger: *mut c_void,
        open_flags: c_uint,
    ) -> *mut xc_interface;
    pub fn xc_interface_close(xch: *mut xc_interface) -> c_int;
    pub fn xc_domain_getinfolist(
        xch: *mut xc_interface,
        first: u32,
        max: c_uint,
        info: *mut xc_domaininfo_t,
    ) -> c_int;
    pub fn xc_domain_maximum_gpfn(xch: *mut xc_interface, domid: u32, gpfns: *mut c_ulong)
        -> c_int;
    pub fn xc_shadow_control(
        xch: *mut xc_interface,
        domid: u32,
        sop: c_uint,
        mb: *mut c_uint,
        mode: c_uint,
    ) -> c_int;
    pub fn xc_logdirty_control(
        xch: *mut xc_interface,
        domid: u32,
        sop: c_uint,
        dirty_bitmap: *mut xc_hypercall_buffer,
        pages: c_ulong,
        mode: c_uint,
        stats: *mut xc_shadow_op_stats_t,
    ) -> i64;
    pub fn xc__hypercall_buffer_alloc_pages(
        xch: *mut xc_interface,
        b: *mut xc_hypercall_buffer,
        nr_pages: c_int,
    ) -> *mut c_void;
    pub fn xc__hypercall_buffer_free_pages(
        xch: *mut xc_interface,
        b: *mut xc_hypercall_buffer,
        nr_pages: c_int,
    );
}

/// Opaque `xenforeignmemory_handle`.
#[repr(C)]
pub struct xenforeignmemory_handle {
    _private: [u8; 0],
}

pub const SHUTDOWN_SUSPEND: u32 = 2;

#[link(name = "xenctrl")]
extern "C" {
    pub fn xc_domain_hvm_getcontext(
        xch: *mut xc_interface,
        domid: u32,
        buf: *mut u8,
        size: u32,
    ) -> c_int;
    pub fn xc_hvm_param_get(
        xch: *mut xc_interface,
        domid: u32,
        param: u32,
        value: *mut u64,
    ) -> c_int;
    /// With `cmd` XENVER_version (0) and a null `arg`: major << 16 | minor.
    pub fn xc_version(xch: *mut xc_interface, cmd: c_int, arg: *mut c_void) -> c_int;
    pub fn xc_domain_get_tsc_info(
        xch: *mut xc_interface,
        domid: u32,
        tsc_mode: *mut u32,
        elapsed_nsec: *mut u64,
        gtsc_khz: *mut u32,
        incarnation: *mut u32,
    ) -> c_int;
}

/// Opaque `xc_cpu_policy_t` (`xenguest.h`).
#[repr(C)]
pub struct xc_cpu_policy_t {
    _private: [u8; 0],
}

/// `xen_cpuid_leaf_t` (`xen/arch-x86/xen.h`): one serialised CPUID leaf.
pub const CPUID_LEAF_BYTES: usize = 24;
/// `xen_msr_entry_t` (`xen/arch-x86/xen.h`): one serialised MSR.
pub const MSR_ENTRY_BYTES: usize = 16;

#[link(name = "xenguest")]
extern "C" {
    pub fn xc_cpu_policy_init() -> *mut xc_cpu_policy_t;
    pub fn xc_cpu_policy_destroy(policy: *mut xc_cpu_policy_t);
    pub fn xc_cpu_policy_get_size(
        xch: *mut xc_interface,
        nr_leaves: *mut u32,
        nr_msrs: *mut u32,
    ) -> c_int;
    pub fn xc_cpu_policy_get_domain(
        xch: *mut xc_interface,
        domid: u32,
        policy: *mut xc_cpu_policy_t,
    ) -> c_int;
    /// `leaves`/`msrs` point at arrays of `xen_cpuid_leaf_t`/`xen_msr_entry_t`,
    /// passed as bytes (see the sizes above).
    pub fn xc_cpu_policy_serialise(
        xch: *mut xc_interface,
        policy: *const xc_cpu_policy_t,
        leaves: *mut u8,
        nr_leaves: *mut u32,
        msrs: *mut u8,
        nr_msrs: *mut u32,
    ) -> c_int;
}

#[link(name = "xenguest")]
extern "C" {
    pub fn xc_domain_resume(xch: *mut xc_interface, domid: u32, fast: c_int) -> c_int;
}

#[link(name = "xenforeignmemory")]
extern "C" {
    pub fn xenforeignmemory_open(
        logger: *mut c_void,
        flags: c_uint,
    ) -> *mut xenforeignmemory_handle;
    pub fn xenforeignmemory_close(h: *mut xenforeignmemory_handle) -> c_int;
    pub fn xenforeignmemory_map(
        h: *mut xenforeignmemory_handle,
        dom: u32,
        prot: c_int,
        pages: usize,
        arr: *const c_ulong,
        err: *mut c_int,
    ) -> *mut c_void;
    pub fn xenforeignmemory_unmap(
        h: *mut xenforeignmemory_handle,
        addr: *mut c_void,
        pages: usize,
    ) -> c_int;
}
