//! Mirrors of the Xen public interface (xen/include/public, interface 4.x),
//! x86_64 PV flavour. Only what the appliance uses is declared.
//!
//! Every structure is `#[repr(C)]` and its size / field offsets are checked by
//! host unit tests against the values of the C headers.

/// Size of a guest page (and of a machine frame) on x86.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Hypercall numbers (`__HYPERVISOR_*`) used by the appliance.
pub mod hc {
    /// Batched checked page-table writes.
    pub const MMU_UPDATE: usize = 1;
    /// Memory reservation / translation operations.
    pub const MEMORY_OP: usize = 12;
    /// Change a single PTE mapping a virtual address.
    pub const UPDATE_VA_MAPPING: usize = 14;
    /// Hypervisor version queries.
    pub const XEN_VERSION: usize = 17;
    /// Write to the hypervisor console (honoured for dom0 only on release builds).
    pub const CONSOLE_IO: usize = 18;
    /// Grant-table operations.
    pub const GRANT_TABLE_OP: usize = 20;
    /// Extended MMU operations (pinning, flushes).
    pub const MMUEXT_OP: usize = 26;
    /// Scheduler operations (yield, block, poll, shutdown).
    pub const SCHED_OP: usize = 29;
    /// Event-channel operations.
    pub const EVENT_CHANNEL_OP: usize = 32;
}

/// `SCHEDOP_*` sub-commands.
pub mod schedop {
    /// Give up the CPU.
    pub const YIELD: usize = 0;
    /// Shut the domain down with a reason ([`super::shutdown`]).
    pub const SHUTDOWN: usize = 2;
    /// Block until one of a set of event channels is pending, or a timeout.
    pub const POLL: usize = 3;
}

/// `SHUTDOWN_*` reasons passed with `SCHEDOP_shutdown`.
pub mod shutdown {
    /// Domain exited normally: clean up and kill.
    pub const POWEROFF: u32 = 0;
    /// Clean up, kill, and restart.
    pub const REBOOT: u32 = 1;
    /// Suspend (checkpoint / migration).
    pub const SUSPEND: u32 = 2;
    /// The guest crashed.
    pub const CRASH: u32 = 3;
}

/// `CONSOLEIO_write`: write bytes to the hypervisor console.
pub const CONSOLEIO_WRITE: usize = 0;
/// `EVTCHNOP_send`: notify the remote end of an event channel.
pub const EVTCHNOP_SEND: usize = 4;
/// `GNTTABOP_setup_table`: get the frames of our grant table (PV).
pub const GNTTABOP_SETUP_TABLE: usize = 2;
/// `GNTTABOP_query_size`: current and maximum grant-table size in frames.
pub const GNTTABOP_QUERY_SIZE: usize = 6;
/// `DOMID_SELF`: the calling domain.
pub const DOMID_SELF: u16 = 0x7FF0;

/// `MMU_NORMAL_PT_UPDATE`: `*ptr = val` checked by Xen, `ptr` a machine address.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `UVMF_INVLPG`: flush the TLB entry of the updated virtual address.
pub const UVMF_INVLPG: usize = 2;

/// Page-table entry bits used by the appliance.
pub mod pte {
    /// Entry is present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User accessible (Xen forces it for 64-bit PV kernel mappings anyway).
    pub const USER: u64 = 1 << 2;
    /// Accessed.
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty.
    pub const DIRTY: u64 = 1 << 6;
    /// No-execute.
    pub const NX: u64 = 1 << 63;
    /// Mask of the frame-number field (bits 12..51).
    pub const FRAME_MASK: u64 = 0x000F_FFFF_FFFF_F000;
}

/// `SIF_*` flags of [`StartInfo::flags`].
pub mod sif {
    /// The domain is privileged.
    pub const PRIVILEGED: u32 = 1 << 0;
    /// The domain is the initial (control) domain: dom0.
    pub const INITDOMAIN: u32 = 1 << 1;
}

/// Virtual address of the read-only machine-to-physical table Xen maps into
/// every 64-bit PV guest (`MACH2PHYS_VIRT_START`). Indexed by MFN, yields PFN.
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// Number of entries of that table (`MACH2PHYS_VIRT_END - START` / 8).
pub const MACH2PHYS_NR_ENTRIES: u64 = (0xFFFF_8040_0000_0000 - MACH2PHYS_VIRT_START) >> 3;

/// The `start_info` page (xen.h, `struct start_info`), x86_64 layout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StartInfo {
    /// "xen-<version>-<platform>", NUL padded.
    pub magic: [u8; 32],
    /// Total pages allocated to this domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Machine frame number of the xenstore ring page.
    pub store_mfn: u64,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// domU: console ring MFN; dom0: offset/size of console_info (see [`ConsoleUnion`]).
    pub console: ConsoleUnion,
    /// Virtual address of the top-level boot page table.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn -> mfn list.
    pub mfn_list: u64,
    /// Virtual address (or PFN) of a pre-loaded module.
    pub mod_start: u64,
    /// Size in bytes of the pre-loaded module.
    pub mod_len: u64,
    /// Kernel command line, NUL terminated.
    pub cmd_line: [u8; 1024],
    /// First pfn of the initial p2m table frames.
    pub first_p2m_pfn: u64,
    /// Number of pfns of the initial p2m table.
    pub nr_p2m_frames: u64,
}

/// The console union of `start_info`; for a domU it is `{ mfn: u64, evtchn: u32 }`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConsoleUnion {
    /// domU: console ring MFN. dom0: low 32 bits info_off, high 32 bits info_size.
    pub word0: u64,
    /// domU: console event channel.
    pub evtchn: u32,
    _pad: u32,
}

/// Per-vCPU time information (`struct vcpu_time_info`), 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct VcpuTimeInfo {
    /// Odd while Xen is updating the record.
    pub version: u32,
    _pad0: u32,
    /// TSC value at the last update.
    pub tsc_timestamp: u64,
    /// System time (ns since Xen boot) at `tsc_timestamp`.
    pub system_time: u64,
    /// Multiplier (32.32 fixed point) converting shifted TSC ticks to ns.
    pub tsc_to_system_mul: u32,
    /// Shift applied to TSC deltas before the multiplication.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    _pad1: [u8; 2],
}

/// `struct vcpu_info` (x86_64), 64 bytes.
#[repr(C)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Non-zero masks event upcalls to this vCPU.
    pub evtchn_upcall_mask: u8,
    _pad: [u8; 6],
    /// Selector of the `evtchn_pending` words with pending bits.
    pub evtchn_pending_sel: u64,
    /// `arch_vcpu_info`: cr2 and padding.
    pub arch: [u64; 2],
    /// Time information of this vCPU.
    pub time: VcpuTimeInfo,
}

/// Number of legacy vcpu_info slots in shared_info.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// `struct shared_info` (x86_64), the part the appliance uses.
#[repr(C)]
pub struct SharedInfo {
    /// Per-vCPU info for the first 32 vCPUs.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// Pending bit per event-channel port (2-level ABI).
    pub evtchn_pending: [u64; 64],
    /// Mask bit per event-channel port.
    pub evtchn_mask: [u64; 64],
    /// Wallclock version (odd while updating).
    pub wc_version: u32,
    /// Wallclock seconds at system time 0.
    pub wc_sec: u32,
    /// Wallclock nanoseconds at system time 0.
    pub wc_nsec: u32,
    /// High 32 bits of `wc_sec`.
    pub wc_sec_hi: u32,
}

/// `struct xencons_interface`: the PV console ring page.
#[repr(C)]
pub struct XenconsInterface {
    /// Input ring (from the console daemon to the guest).
    pub input: [u8; 1024],
    /// Output ring (from the guest).
    pub output: [u8; 2048],
    /// Input consumer index (guest).
    pub in_cons: u32,
    /// Input producer index (backend).
    pub in_prod: u32,
    /// Output consumer index (backend).
    pub out_cons: u32,
    /// Output producer index (guest).
    pub out_prod: u32,
}

/// Size of each xenstore ring.
pub const XENSTORE_RING_SIZE: usize = 1024;

/// `struct xenstore_domain_interface`: the xenstore ring page.
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to the xenstore daemon.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Request consumer index (daemon).
    pub req_cons: u32,
    /// Request producer index (guest).
    pub req_prod: u32,
    /// Response consumer index (guest).
    pub rsp_cons: u32,
    /// Response producer index (daemon).
    pub rsp_prod: u32,
    /// Feature bits of the server.
    pub server_features: u32,
    /// Connection state (0 = connected).
    pub connection: u32,
    /// Error indicator.
    pub error: u32,
}

/// `struct mmu_update`: one request of `HYPERVISOR_mmu_update`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// Machine address of the PTE, low bits = `MMU_*` command.
    pub ptr: u64,
    /// New PTE value.
    pub val: u64,
}

/// `struct grant_entry_v1`: one entry of a version-1 grant table.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct GrantEntryV1 {
    /// `GTF_*` flags; written last when granting.
    pub flags: u16,
    /// The domain being granted access.
    pub domid: u16,
    /// The frame (MFN for PV) being granted.
    pub frame: u32,
}

/// `GTF_permit_access`: the grantee may map / copy the frame.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`: restrict the grantee to read-only access.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: the grantee is currently reading (set by Xen).
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: the grantee is currently writing (set by Xen).
pub const GTF_WRITING: u16 = 1 << 4;
/// Grant references reserved for the toolstack (`GNTTAB_NR_RESERVED_ENTRIES`).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// `struct gnttab_setup_table` (interface >= 0x00040300).
#[repr(C)]
pub struct GnttabSetupTable {
    /// IN: domain (DOMID_SELF).
    pub dom: u16,
    /// IN: number of frames wanted.
    pub nr_frames: u32,
    /// OUT: GNTST_* status.
    pub status: i16,
    /// IN: guest pointer to an array of `nr_frames` u64 that receives the MFNs.
    pub frame_list: *mut u64,
}

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(Default)]
pub struct GnttabQuerySize {
    /// IN: domain.
    pub dom: u16,
    /// OUT: current size in frames.
    pub nr_frames: u32,
    /// OUT: maximum size in frames.
    pub max_nr_frames: u32,
    /// OUT: GNTST_* status.
    pub status: i16,
}

/// `struct sched_poll`.
#[repr(C)]
pub struct SchedPoll {
    /// Guest pointer to the array of ports.
    pub ports: *const u32,
    /// Number of ports.
    pub nr_ports: u32,
    /// Absolute system time (ns) at which to give up; 0 = no timeout.
    pub timeout: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn start_info_layout_matches_xen_h() {
        assert_eq!(offset_of!(StartInfo, nr_pages), 32);
        assert_eq!(offset_of!(StartInfo, shared_info), 40);
        assert_eq!(offset_of!(StartInfo, flags), 48);
        assert_eq!(offset_of!(StartInfo, store_mfn), 56);
        assert_eq!(offset_of!(StartInfo, store_evtchn), 64);
        assert_eq!(offset_of!(StartInfo, console), 72);
        assert_eq!(offset_of!(StartInfo, pt_base), 88);
        assert_eq!(offset_of!(StartInfo, mfn_list), 104);
        assert_eq!(offset_of!(StartInfo, cmd_line), 128);
        assert_eq!(offset_of!(StartInfo, first_p2m_pfn), 1152);
        assert_eq!(size_of::<StartInfo>(), 1168);
    }

    #[test]
    fn shared_info_layout_matches_xen_h() {
        assert_eq!(size_of::<VcpuTimeInfo>(), 32);
        assert_eq!(size_of::<VcpuInfo>(), 64);
        assert_eq!(offset_of!(VcpuInfo, time), 32);
        assert_eq!(offset_of!(SharedInfo, evtchn_pending), 2048);
        assert_eq!(offset_of!(SharedInfo, evtchn_mask), 2560);
        assert_eq!(offset_of!(SharedInfo, wc_version), 3072);
    }

    #[test]
    fn ring_pages_match_io_headers() {
        assert_eq!(offset_of!(XenconsInterface, in_cons), 3072);
        assert_eq!(offset_of!(XenconsInterface, out_prod), 3084);
        assert_eq!(offset_of!(XenstoreDomainInterface, req_cons), 2048);
        assert_eq!(offset_of!(XenstoreDomainInterface, rsp_prod), 2060);
        assert_eq!(offset_of!(XenstoreDomainInterface, connection), 2068);
    }

    #[test]
    fn hypercall_argument_structs() {
        assert_eq!(size_of::<MmuUpdate>(), 16);
        assert_eq!(size_of::<GrantEntryV1>(), 8);
        assert_eq!(offset_of!(GnttabSetupTable, status), 8);
        assert_eq!(offset_of!(GnttabSetupTable, frame_list), 16);
        assert_eq!(size_of::<GnttabQuerySize>(), 16);
        assert_eq!(offset_of!(SchedPoll, timeout), 16);
    }
}
