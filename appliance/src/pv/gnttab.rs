//! The grant table (version 1), set up the PV way: `GNTTABOP_setup_table`
//! returns the MFNs of the table's frames, which the guest maps itself.
//! Netfront will grant its ring and buffer pages through [`grant_access`].

use alloc::vec::Vec;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};
use resilire_boot::abi::{self, GnttabQuerySize, GnttabSetupTable, GrantEntryV1, PAGE_SIZE};
use resilire_boot::hypercall::{self, XenError};
use spin::Mutex;

use super::mm;

/// Frames requested from Xen (each holds 512 v1 entries).
const WANT_FRAMES: u32 = 4;

struct Table {
    entries: *mut GrantEntryV1,
    count: u32,
    free: Vec<u32>,
}

// SAFETY: the entries pointer refers to the grant-table frames mapped for
// the life of the domain; single vCPU.
unsafe impl Send for Table {}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Grant-table errors.
#[derive(Debug)]
pub enum GntError {
    /// A hypercall failed.
    Xen(&'static str, XenError),
    /// Xen returned a GNTST_* error status.
    Status(i16),
    /// Mapping the table failed.
    Map(mm::MmError),
    /// No free grant reference.
    Full,
    /// The grantee still has the frame mapped.
    InUse,
}

impl core::fmt::Display for GntError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GntError::Xen(w, e) => write!(f, "{w}: {e}"),
            GntError::Status(s) => write!(f, "grant table status {s}"),
            GntError::Map(e) => write!(f, "mapping grant table: {e}"),
            GntError::Full => f.write_str("grant table full"),
            GntError::InUse => f.write_str("grant still in use"),
        }
    }
}

/// Sets the grant table up; returns (frames, entries, max frames).
pub fn init() -> Result<(u32, u32, u32), GntError> {
    let mut q = GnttabQuerySize {
        dom: abi::DOMID_SELF,
        ..Default::default()
    };
    // SAFETY: one gnttab_query_size on the stack.
    unsafe { hypercall::grant_table_op(abi::GNTTABOP_QUERY_SIZE, &mut q as *mut _ as *mut u8, 1) }
        .map_err(|e| GntError::Xen("GNTTABOP_query_size", e))?;
    if q.status != 0 {
        return Err(GntError::Status(q.status));
    }
    let nr = WANT_FRAMES.min(q.max_nr_frames.max(1));
    let mut frames = [0u64; WANT_FRAMES as usize];
    let mut st = GnttabSetupTable {
        dom: abi::DOMID_SELF,
        nr_frames: nr,
        status: 0,
        frame_list: frames.as_mut_ptr(),
    };
    // SAFETY: `st` points at `frames`, which has room for `nr` MFNs.
    unsafe {
        hypercall::grant_table_op(abi::GNTTABOP_SETUP_TABLE, &mut st as *mut _ as *mut u8, 1)
    }
    .map_err(|e| GntError::Xen("GNTTABOP_setup_table", e))?;
    if st.status != 0 {
        return Err(GntError::Status(st.status));
    }
    // Map the frames contiguously in the IO window.
    let mut base: *mut u8 = core::ptr::null_mut();
    for (i, &mfn) in frames[..nr as usize].iter().enumerate() {
        let va = mm::map_foreign(mfn, true).map_err(GntError::Map)?;
        if i == 0 {
            base = va;
        }
        debug_assert_eq!(va as usize, base as usize + i * PAGE_SIZE);
    }
    let count = nr * (PAGE_SIZE / core::mem::size_of::<GrantEntryV1>()) as u32;
    let free = (abi::GNTTAB_NR_RESERVED_ENTRIES..count).rev().collect();
    *TABLE.lock() = Some(Table {
        entries: base as *mut GrantEntryV1,
        count,
        free,
    });
    Ok((nr, count, q.max_nr_frames))
}

/// Grants domain `domid` access to machine frame `mfn`; returns the reference.
pub fn grant_access(domid: u16, mfn: u64, readonly: bool) -> Result<u32, GntError> {
    let mut g = TABLE.lock();
    let t = g.as_mut().ok_or(GntError::Full)?;
    let gref = t.free.pop().ok_or(GntError::Full)?;
    // SAFETY: gref < count, inside the mapped table. domid and frame must be
    // visible before flags, which hands the entry to Xen.
    unsafe {
        let e = t.entries.add(gref as usize);
        write_volatile(addr_of_mut!((*e).domid), domid);
        write_volatile(addr_of_mut!((*e).frame), mfn as u32);
        fence(Ordering::Release);
        let flags = abi::GTF_PERMIT_ACCESS | if readonly { abi::GTF_READONLY } else { 0 };
        write_volatile(addr_of_mut!((*e).flags), flags);
    }
    Ok(gref)
}

/// Revokes a grant. Fails with [`GntError::InUse`] while the grantee maps it.
pub fn end_access(gref: u32) -> Result<(), GntError> {
    let mut g = TABLE.lock();
    let t = g.as_mut().ok_or(GntError::Full)?;
    assert!(gref >= abi::GNTTAB_NR_RESERVED_ENTRIES && gref < t.count);
    // SAFETY: inside the mapped table. The flags word is shared with Xen,
    // which sets READING/WRITING while the grantee uses the frame; clear it
    // with a compare-exchange so a concurrent map is not missed.
    unsafe {
        let p = addr_of_mut!((*t.entries.add(gref as usize)).flags);
        let a = core::sync::atomic::AtomicU16::from_ptr(p);
        let cur = read_volatile(p);
        if cur & (abi::GTF_READING | abi::GTF_WRITING) != 0 {
            return Err(GntError::InUse);
        }
        if a.compare_exchange(cur, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(GntError::InUse);
        }
    }
    t.free.push(gref);
    Ok(())
}
