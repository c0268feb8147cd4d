//! Safe access to the hypervisor through libxenctrl: the only module of the
//! shim that holds `unsafe` for domain control.

mod ffi;
mod foreign;

pub use foreign::{ForeignMemory, Mapping};

use anyhow::{bail, Result};
use std::io;

/// An open connection to libxenctrl (`/dev/xen/privcmd`); dom0 only.
pub struct XenCtrl {
    xch: *mut ffi::xc_interface,
}

/// What the shim needs to know about a domain.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u32,
    /// Pages currently allocated to it.
    pub tot_pages: u64,
    /// Its page limit.
    pub max_pages: u64,
    /// HVM container (HVM or PVH), as opposed to PV.
    pub hvm: bool,
    /// Uses hardware-assisted paging (log-dirty works).
    pub hap: bool,
    /// Paused by the toolstack.
    pub paused: bool,
    /// Dying.
    pub dying: bool,
    /// Shut down, with the guest's reason code.
    pub shutdown: Option<u32>,
    /// The domain's UUID handle.
    pub handle: [u8; 16],
    /// Its vCPU count (highest vCPU id + 1).
    pub vcpus: u32,
}

impl XenCtrl {
    /// Opens the interface (needs dom0 privileges and xen-privcmd).
    pub fn open() -> Result<XenCtrl> {
        // SAFETY: null loggers select libxenctrl's defaults; flags 0.
        let xch = unsafe { ffi::xc_interface_open(std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if xch.is_null() {
            bail!(
                "cannot open libxenctrl: {} (running in dom0 with xen-privcmd loaded?)",
                io::Error::last_os_error()
            );
        }
        Ok(XenCtrl { xch })
    }

    /// Every domain, in domain id order.
    pub fn domains(&self) -> Result<Vec<DomainInfo>> {
        let mut out = Vec::new();
        let mut next = 0u32;
        loop {
            // SAFETY: xc_domaininfo_t is plain data; an all-zero value is valid.
            let mut buf = vec![unsafe { std::mem::zeroed::<ffi::xc_domaininfo_t>() }; 64];
            // SAFETY: buf holds 64 writable entries, as we tell the library.
            let n = unsafe {
                ffi::xc_domain_getinfolist(self.xch, next, buf.len() as u32, buf.as_mut_ptr())
            };
            if n < 0 {
                bail!("xc_domain_getinfolist: {}", io::Error::last_os_error());
            }
            for raw in &buf[..n as usize] {
                out.push(DomainInfo::from_raw(raw));
                next = u32::from(raw.domain) + 1;
            }
            if (n as usize) < buf.len() {
                return Ok(out);
            }
        }
    }

    /// One domain by id.
    pub fn domain(&self, domid: u32) -> Result<DomainInfo> {
        match self.domains()?.into_iter().find(|d| d.domid == domid) {
            Some(d) => Ok(d),
            None => bail!("no domain {domid}"),
        }
    }

    /// Number of guest frames (highest gpfn + 1): the size of a dirty bitmap.
    pub fn nr_gpfns(&self, domid: u32) -> Result<u64> {
        let mut max: std::os::raw::c_ulong = 0;
        // SAFETY: `max` is a valid out-pointer.
        let rc = unsafe { ffi::xc_domain_maximum_gpfn(self.xch, domid, &mut max) };
        if rc < 0 {
            bail!(
                "xc_domain_maximum_gpfn({domid}): {}",
                io::Error::last_os_error()
            );
        }
        Ok(max as u64 + 1)
    }

    /// Turns log-dirty mode on for a HAP domain and returns the tracker.
    /// Log-dirty stays on until the tracker is dropped.
    pub fn log_dirty(&self, domid: u32) -> Result<LogDirty<'_>> {
        let info = self.domain(domid)?;
        if !info.hap {
            bail!("domain {domid} has no hardware-assisted paging: log-dirty needs a PVH/HVM guest with HAP on this Xen");
        }
        let pages = self.nr_gpfns(domid)?;
        // SAFETY: plain call; a null `mb` is accepted for this op.
        let rc = unsafe {
            ffi::xc_shadow_control(
                self.xch,
                domid,
                ffi::XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc < 0 {
            bail!(
                "enabling log-dirty on domain {domid}: {}",
                io::Error::last_os_error()
            );
        }
        let bitmap = HypercallPages::alloc(self, pages.div_ceil(8).div_ceil(4096) as usize)?;
        Ok(LogDirty {
            xc: self,
            domid,
            pages,
            bitmap,
        })
    }
}

impl XenCtrl {
    /// Resumes a domain that suspended itself. `fast` = suspend-cancel: the
    /// guest sees its suspend hypercall return 1 and carries on where it was,
    /// devices still connected (the checkpoint path).
    pub fn resume(&self, domid: u32, fast: bool) -> Result<()> {
        // SAFETY: plain call.
        if unsafe { ffi::xc_domain_resume(self.xch, domid, i32::from(fast)) } < 0 {
            bail!("resuming domain {domid}: {}", io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the domain has shut down for a suspend (its suspend point).
    pub fn is_suspended(&self, domid: u32) -> Result<bool> {
        Ok(self.domain(domid)?.shutdown == Some(ffi::SHUTDOWN_SUSPEND))
    }

    /// The HVM context blob (vCPU registers, LAPIC, timers...) of an
    /// HVM/PVH domain, as a restore applies it.
    pub fn hvm_context(&self, domid: u32) -> Result<Vec<u8>> {
        // SAFETY: a null buffer asks for the size.
        let size =
            unsafe { ffi::xc_domain_hvm_getcontext(self.xch, domid, std::ptr::null_mut(), 0) };
        if size <= 0 {
            bail!(
                "sizing the HVM context of domain {domid}: {}",
                io::Error::last_os_error()
            );
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has `size` writable bytes.
        let n = unsafe {
            ffi::xc_domain_hvm_getcontext(self.xch, domid, buf.as_mut_ptr(), size as u32)
        };
        if n < 0 {
            bail!(
                "reading the HVM context of domain {domid}: {}",
                io::Error::last_os_error()
            );
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// One HVM parameter (HVM_PARAM_* of `xen/hvm/params.h`).
    pub fn hvm_param(&self, domid: u32, param: u32) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: v is a valid out-pointer.
        if unsafe { ffi::xc_hvm_param_get(self.xch, domid, param, &mut v) } < 0 {
            bail!(
                "reading HVM param {param} of domain {domid}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(v)
    }

    /// The running Xen's (major, minor) version.
    pub fn version(&self) -> Result<(u32, u32)> {
        // SAFETY: XENVER_version takes no argument.
        let v = unsafe { ffi::xc_version(self.xch, 0, std::ptr::null_mut()) };
        if v < 0 {
            bail!("reading Xen's version: {}", io::Error::last_os_error());
        }
        Ok((v as u32 >> 16, v as u32 & 0xffff))
    }

    /// The domain's TSC mode, frequency, elapsed time and incarnation, as a
    /// restore sets them (XEN_DOMCTL_gettscinfo).
    pub fn tsc_info(&self, domid: u32) -> Result<TscInfo> {
        let mut t = TscInfo::default();
        // SAFETY: four valid out-pointers.
        let rc = unsafe {
            ffi::xc_domain_get_tsc_info(
                self.xch,
                domid,
                &mut t.mode,
                &mut t.nsec,
                &mut t.khz,
                &mut t.incarnation,
            )
        };
        if rc < 0 {
            bail!(
                "reading the TSC info of domain {domid}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(t)
    }

    /// The domain's CPUID and MSR policies, serialised as arrays of
    /// `xen_cpuid_leaf_t` and `xen_msr_entry_t` (what a migration stream's
    /// X86_CPUID_POLICY and X86_MSR_POLICY records carry).
    pub fn cpu_policy(&self, domid: u32) -> Result<CpuPolicy> {
        let (mut nr_leaves, mut nr_msrs) = (0u32, 0u32);
        // SAFETY: valid out-pointers.
        if unsafe { ffi::xc_cpu_policy_get_size(self.xch, &mut nr_leaves, &mut nr_msrs) } < 0 {
            bail!("sizing CPU policies: {}", io::Error::last_os_error());
        }
        let mut leaves = vec![0u8; nr_leaves as usize * ffi::CPUID_LEAF_BYTES];
        let mut msrs = vec![0u8; nr_msrs as usize * ffi::MSR_ENTRY_BYTES];
        // SAFETY: init returns an owned object or null; it is destroyed below.
        let policy = unsafe { ffi::xc_cpu_policy_init() };
        if policy.is_null() {
            bail!("allocating a CPU policy object");
        }
        // SAFETY: policy is live; the buffers have room for the counts passed.
        let rc = unsafe {
            let mut rc = ffi::xc_cpu_policy_get_domain(self.xch, domid, policy);
            if rc == 0 {
                rc = ffi::xc_cpu_policy_serialise(
                    self.xch,
                    policy,
                    leaves.as_mut_ptr(),
                    &mut nr_leaves,
                    msrs.as_mut_ptr(),
                    &mut nr_msrs,
                );
            }
            let err = io::Error::last_os_error();
            ffi::xc_cpu_policy_destroy(policy);
            (rc, err)
        };
        if rc.0 != 0 {
            bail!("reading the CPU policy of domain {domid}: {}", rc.1);
        }
        leaves.truncate(nr_leaves as usize * ffi::CPUID_LEAF_BYTES);
        msrs.truncate(nr_msrs as usize * ffi::MSR_ENTRY_BYTES);
        Ok(CpuPolicy {
            cpuid: leaves,
            msrs,
        })
    }
}

/// A domain's TSC settings (XEN_DOMCTL_gettscinfo).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TscInfo {
    /// TSC_MODE_*.
    pub mode: u32,
    /// Guest TSC frequency in kHz.
    pub khz: u32,
    /// Elapsed nanoseconds.
    pub nsec: u64,
    /// Incarnation (bumped at each restore).
    pub incarnation: u32,
}

impl TscInfo {
    /// The 24-byte body of a migration stream's X86_TSC_INFO record
    /// (mode, khz, nsec, incarnation, reserved; little-endian).
    pub fn to_record(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.mode.to_le_bytes());
        b[4..8].copy_from_slice(&self.khz.to_le_bytes());
        b[8..16].copy_from_slice(&self.nsec.to_le_bytes());
        b[16..20].copy_from_slice(&self.incarnation.to_le_bytes());
        b
    }

    /// Reads [`TscInfo::to_record`]'s layout back.
    pub fn from_record(b: &[u8; 24]) -> TscInfo {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        TscInfo {
            mode: u32_at(0),
            khz: u32_at(4),
            nsec: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            incarnation: u32_at(16),
        }
    }
}

/// A domain's CPUID and MSR policies, serialised as Xen does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuPolicy {
    /// `xen_cpuid_leaf_t[]` bytes.
    pub cpuid: Vec<u8>,
    /// `xen_msr_entry_t[]` bytes.
    pub msrs: Vec<u8>,
}

impl Drop for XenCtrl {
    fn drop(&mut self) {
        // SAFETY: xch came from xc_interface_open and is closed once.
        unsafe { ffi::xc_interface_close(self.xch) };
    }
}

impl DomainInfo {
    fn from_raw(r: &ffi::xc_domaininfo_t) -> DomainInfo {
        DomainInfo {
            domid: u32::from(r.domain),
            tot_pages: r.tot_pages,
            max_pages: r.max_pages,
            hvm: r.flags & ffi::XEN_DOMINF_HVM_GUEST != 0,
            hap: r.flags & ffi::XEN_DOMINF_HAP != 0,
            paused: r.flags & ffi::XEN_DOMINF_PAUSED != 0,
            dying: r.flags & ffi::XEN_DOMINF_DYING != 0,
            shutdown: (r.flags & ffi::XEN_DOMINF_SHUTDOWN != 0)
                .then_some((r.flags >> ffi::XEN_DOMINF_SHUTDOWN_SHIFT) & 0xff),
            handle: r.handle,
            vcpus: r.max_vcpu_id + 1,
        }
    }
}

/// Page-aligned memory that Xen may write during a hypercall.
struct HypercallPages<'a> {
    xc: &'a XenCtrl,
    buf: Box<ffi::xc_hypercall_buffer>,
    nr: usize,
}

impl<'a> HypercallPages<'a> {
    fn alloc(xc: &'a XenCtrl, nr: usize) -> Result<Self> {
        // The buffer descriptor as DECLARE_HYPERCALL_BUFFER sets it up:
        // no bounce buffer (`ubuf` = -1), filled in by the allocator.
        let mut buf = Box::new(ffi::xc_hypercall_buffer {
            hbuf: std::ptr::null_mut(),
            param_shadow: std::ptr::null_mut(),
            dir: 0,
            ubuf: usize::MAX as *mut _,
            sz: 0,
        });
        // SAFETY: buf is a valid descriptor that outlives the allocation.
        let p = unsafe { ffi::xc__hypercall_buffer_alloc_pages(xc.xch, &mut *buf, nr as i32) };
        if p.is_null() {
            bail!(
                "allocating {nr} hypercall pages: {}",
                io::Error::last_os_error()
            );
        }
        Ok(HypercallPages { xc, buf, nr })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: hbuf points at nr pages owned by this value.
        unsafe { std::slice::from_raw_parts(self.buf.hbuf as *const u8, self.nr * 4096) }
    }
}

impl Drop for HypercallPages<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by xc__hypercall_buffer_alloc_pages with the same count.
        unsafe {
            ffi::xc__hypercall_buffer_free_pages(self.xc.xch, &mut *self.buf, self.nr as i32)
        };
    }
}

/// A domain in log-dirty mode.
pub struct LogDirty<'a> {
    xc: &'a XenCtrl,
    domid: u32,
    pages: u64,
    bitmap: HypercallPages<'a>,
}

impl LogDirty<'_> {
    /// Number of guest frames the bitmap covers.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Reads and clears the dirty bitmap: the pages written since the last
    /// call (or since log-dirty was enabled). Bit n = pfn n.
    pub fn clean(&mut self) -> Result<DirtyBitmap> {
        self.op(ffi::XEN_DOMCTL_SHADOW_OP_CLEAN)
    }

    /// Reads the dirty bitmap without clearing it.
    pub fn peek(&mut self) -> Result<DirtyBitmap> {
        self.op(ffi::XEN_DOMCTL_SHADOW_OP_PEEK)
    }

    fn op(&mut self, sop: u32) -> Result<DirtyBitmap> {
        let mut stats = ffi::xc_shadow_op_stats_t::default();
        // SAFETY: the bitmap buffer holds at least `pages` bits.
        let rc = unsafe {
            ffi::xc_logdirty_control(
                self.xc.xch,
                self.domid,
                sop,
                &mut *self.bitmap.buf,
                self.pages as _,
                0,
                &mut stats,
            )
        };
        if rc < 0 {
            bail!(
                "log-dirty op {sop} on domain {}: {}",
                self.domid,
                io::Error::last_os_error()
            );
        }
        let len = self.pages.div_ceil(8) as usize;
        Ok(DirtyBitmap {
            bits: self.bitmap.bytes()[..len].to_vec(),
            pages: self.pages,
        })
    }
}

impl Drop for LogDirty<'_> {
    fn drop(&mut self) {
        // SAFETY: plain call turning log-dirty off again.
        unsafe {
            ffi::xc_shadow_control(
                self.xc.xch,
                self.domid,
                ffi::XEN_DOMCTL_SHADOW_OP_OFF,
                std::ptr::null_mut(),
                0,
            )
        };
    }
}

/// A snapshot of dirty bits, one per guest frame.
pub struct DirtyBitmap {
    bits: Vec<u8>,
    pages: u64,
}

impl DirtyBitmap {
    /// Builds a bitmap from raw bytes (bit n of byte n/8 = pfn n).
    pub fn from_bytes(bits: Vec<u8>, pages: u64) -> DirtyBitmap {
        DirtyBitmap { bits, pages }
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// The dirty frame numbers, ascending.
    pub fn pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits
            .iter()
            .enumerate()
            .flat_map(|(i, &b)| {
                (0..8)
                    .filter(move |bit| b & (1 << bit) != 0)
                    .map(move |bit| i as u64 * 8 + bit)
            })
            .filter(|&p| p < self.pages)
    }
}

#[cfg(test)]
mod tests {
    use super::DirtyBitmap;

    #[test]
    fn bitmap_lists_frames_in_order() {
        let b = DirtyBitmap::from_bytes(vec![0b1000_0001, 0, 0b0000_0100], 24);
        assert_eq!(b.count(), 3);
        assert_eq!(b.pfns().collect::<Vec<_>>(), [0, 7, 18]);
    }

    #[test]
    fn bits_beyond_the_domain_are_ignored() {
        let b = DirtyBitmap::from_bytes(vec![0xff], 3);
        assert_eq!(b.pfns().count(), 3);
    }
}
