//! Memory: pfn <-> mfn translation, page tables over all of the domain's
//! memory, the frame allocator, the heap, and a window for foreign frames.
//!
//! PV memory model in short: the guest sees "pseudo-physical" frames (PFNs,
//! 0..nr_pages) backed by machine frames (MFNs). `start_info.mfn_list` is the
//! pfn -> mfn array (p2m); Xen's read-only table at `MACH2PHYS_VIRT_START`
//! maps mfn -> pfn (m2p). Page-table entries hold MFNs. The guest may not
//! write its page tables directly: every page-table frame must be mapped
//! read-only, and entries are changed with `HYPERVISOR_mmu_update` /
//! `update_va_mapping`, which Xen validates.
//!
//! Xen's builder maps only the first few MiB (image, p2m, start_info, rings,
//! boot page tables, >= 512 KiB spare) at virtual address = pfn << 12. [`init`]
//! extends that 1:1 mapping to every page of the domain, taking each new
//! page-table frame from the lowest free frame, which is always inside the
//! part already mapped (the allocator is lowest-first and every L1 table maps
//! 512 frames but costs one).
//!
//! Virtual layout: `[0, nr_pages << 12)` 1:1 memory (page 0 unmapped as a null
//! guard); [`IO_WINDOW`] upwards: foreign frames (shared_info, grant table).

use core::ptr::{read_volatile, write_bytes};
use linked_list_allocator::LockedHeap;
use resilire_appliance::config::MemoryReport;
use resilire_appliance::frames::FrameAllocator;
use resilire_boot::abi::{self, pte, MmuUpdate, PAGE_SHIFT, PAGE_SIZE};
use resilire_boot::hypercall::{self, XenError};
use resilire_boot::start_info::BootInfo;
use spin::Mutex;

/// The global heap, initialised by [`init`].
#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Virtual base of the window where foreign frames are mapped.
pub const IO_WINDOW: u64 = 0x0000_1000_0000_0000;

/// PTE bits of an ordinary data page.
const DATA_PAGE: u64 = pte::PRESENT | pte::RW | pte::ACCESSED | pte::DIRTY;
/// PTE bits of the mapping of a page-table frame (must be read-only).
const TABLE_PAGE_RO: u64 = pte::PRESENT | pte::ACCESSED;
/// Bits of an entry that points to a lower-level table.
const TABLE_LINK: u64 = pte::PRESENT | pte::RW | pte::USER | pte::ACCESSED | pte::DIRTY;
/// p2m value of a PFN without backing memory.
const INVALID_MFN: u64 = u64::MAX;

/// Memory errors.
#[derive(Debug)]
pub enum MmError {
    /// A hypercall failed.
    Xen(&'static str, XenError),
    /// No free frame left.
    OutOfFrames,
    /// A frame that had to be mapped already was not (broken invariant).
    NotMapped(u64),
}

impl core::fmt::Display for MmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmError::Xen(what, e) => write!(f, "{what}: {e}"),
            MmError::OutOfFrames => f.write_str("out of page frames"),
            MmError::NotMapped(va) => write!(f, "address {va:#x} is not mapped"),
        }
    }
}

/// Translates an MFN to its PFN through Xen's m2p table.
pub fn mfn_to_pfn(mfn: u64) -> u64 {
    assert!(mfn < abi::MACH2PHYS_NR_ENTRIES);
    // SAFETY: Xen maps the m2p table read-only at MACH2PHYS_VIRT_START in
    // every 64-bit PV guest; the index is bounded by its size.
    unsafe { read_volatile((abi::MACH2PHYS_VIRT_START as *const u64).add(mfn as usize)) }
}

/// Virtual address of a frame of this domain given by MFN (ring pages etc.).
pub fn mfn_to_va(mfn: u64) -> u64 {
    mfn_to_pfn(mfn) << PAGE_SHIFT
}

struct Memory {
    p2m: &'static [u64],
    l4_mfn: u64,
    l4_va: u64,
    frames: FrameAllocator<'static>,
    io_next: u64,
    pt_frames_added: u64,
    heap_bytes: u64,
}

static MEMORY: Mutex<Option<Memory>> = Mutex::new(None);

/// What [`init`] did, for the boot log.
#[derive(Debug, Clone, Copy)]
pub struct InitReport {
    /// Pages of the domain.
    pub nr_pages: u64,
    /// First PFN not used by the boot image / structures.
    pub first_free_pfn: u64,
    /// Pages newly mapped beyond the boot mapping.
    pub newly_mapped: u64,
    /// Page-table frames added.
    pub pt_frames_added: u64,
    /// Heap size in bytes.
    pub heap_bytes: u64,
}

fn entry_mfn(e: u64) -> u64 {
    (e & pte::FRAME_MASK) >> PAGE_SHIFT
}

impl Memory {
    fn mfn(&self, pfn: u64) -> u64 {
        self.p2m.get(pfn as usize).copied().unwrap_or(INVALID_MFN)
    }

    /// Finds the L1 entry mapping `va`: (machine address of the entry,
    /// current value). `None` if an intermediate table is missing.
    fn l1_slot(&self, va: u64) -> Option<(u64, u64)> {
        let mut table_mfn = self.l4_mfn;
        let mut table_va = self.l4_va;
        for level in (1..=4u32).rev() {
            let idx = (va >> (PAGE_SHIFT + 9 * (level - 1))) & 511;
            // SAFETY: every page-table frame is mapped (read-only) at
            // pfn << 12: boot tables by Xen, new ones by `new_table`.
            let e = unsafe { read_volatile((table_va as *const u64).add(idx as usize)) };
            if level == 1 {
                return Some(((table_mfn << PAGE_SHIFT) + idx * 8, e));
            }
            if e & pte::PRESENT == 0 {
                return None;
            }
            table_mfn = entry_mfn(e);
            table_va = mfn_to_va(table_mfn);
        }
        unreachable!()
    }

    fn is_mapped(&self, va: u64) -> bool {
        matches!(self.l1_slot(va), Some((_, e)) if e & pte::PRESENT != 0)
    }

    /// Allocates a zeroed frame, maps it read-only and returns its MFN, ready
    /// to be linked into a page table.
    fn new_table(&mut self) -> Result<u64, MmError> {
        let pfn = self.frames.alloc().ok_or(MmError::OutOfFrames)?;
        let va = pfn << PAGE_SHIFT;
        if !self.is_mapped(va) {
            return Err(MmError::NotMapped(va));
        }
        let mfn = self.mfn(pfn);
        // SAFETY: the frame was free (no Rust reference to it) and is mapped
        // writable at `va`; it is zeroed, then its only mapping becomes
        // read-only as Xen requires of page-table frames.
        unsafe {
            write_bytes(va as *mut u8, 0, PAGE_SIZE);
            hypercall::update_va_mapping(va, (mfn << PAGE_SHIFT) | TABLE_PAGE_RO, abi::UVMF_INVLPG)
                .map_err(|e| MmError::Xen("remap page-table frame read-only", e))?;
        }
        self.pt_frames_added += 1;
        Ok(mfn)
    }

    /// Makes sure L4..L2 tables exist for `va`; returns the L1 slot.
    fn ensure_tables(&mut self, va: u64) -> Result<(u64, u64), MmError> {
        loop {
            if let Some(slot) = self.l1_slot(va) {
                return Ok(slot);
            }
            // Find the first missing level and add one table there.
            let mut table_mfn = self.l4_mfn;
            let mut table_va = self.l4_va;
            for level in (2..=4u32).rev() {
                let idx = (va >> (PAGE_SHIFT + 9 * (level - 1))) & 511;
                // SAFETY: as in l1_slot.
                let e = unsafe { read_volatile((table_va as *const u64).add(idx as usize)) };
                if e & pte::PRESENT == 0 {
                    let new_mfn = self.new_table()?;
                    let req = [MmuUpdate {
                        ptr: ((table_mfn << PAGE_SHIFT) + idx * 8) | abi::MMU_NORMAL_PT_UPDATE,
                        val: (new_mfn << PAGE_SHIFT) | TABLE_LINK,
                    }];
                    // SAFETY: links a fresh, zeroed table into an empty slot:
                    // no existing mapping changes.
                    unsafe { hypercall::mmu_update(&req) }
                        .map_err(|e| MmError::Xen("link page table", e))?;
                    break;
                }
                table_mfn = entry_mfn(e);
                table_va = mfn_to_va(table_mfn);
            }
        }
    }

    fn flush(batch: &mut [MmuUpdate], n: &mut usize) -> Result<(), MmError> {
        if *n > 0 {
            // SAFETY: the batch only fills empty L1 slots with free frames.
            unsafe { hypercall::mmu_update(&batch[..*n]) }
                .map_err(|e| MmError::Xen("map memory", e))?;
            *n = 0;
        }
        Ok(())
    }

    /// Maps every PFN from `from` upwards that is not mapped yet.
    fn map_all(&mut self, from: u64) -> Result<u64, MmError> {
        let mut batch = [MmuUpdate::default(); 256];
        let mut n = 0;
        let mut newly = 0;
        for pfn in from..self.p2m.len() as u64 {
            let mfn = self.mfn(pfn);
            if mfn == INVALID_MFN {
                continue;
            }
            let va = pfn << PAGE_SHIFT;
            let slot = match self.l1_slot(va) {
                Some(s) => s,
                None => {
                    // a new table is taken from already-mapped memory: first
                    // make the queued mappings real
                    Self::flush(&mut batch, &mut n)?;
                    self.ensure_tables(va)?
                }
            };
            if slot.1 & pte::PRESENT != 0 {
                continue;
            }
            batch[n] = MmuUpdate {
                ptr: slot.0 | abi::MMU_NORMAL_PT_UPDATE,
                val: (mfn << PAGE_SHIFT) | DATA_PAGE,
            };
            n += 1;
            newly += 1;
            if n == batch.len() {
                Self::flush(&mut batch, &mut n)?;
            }
        }
        Self::flush(&mut batch, &mut n)?;
        Ok(newly)
    }
}

/// Sets up memory: frame allocator, page tables over all pages, heap.
pub fn init(bi: &BootInfo) -> Result<InitReport, MmError> {
    let nr_pages = bi.nr_pages;
    // SAFETY: Xen maps the p2m list (nr_pages u64) at start_info.mfn_list in
    // the boot mapping; nothing ever writes it (the appliance does not
    // balloon).
    let p2m: &'static [u64] =
        unsafe { core::slice::from_raw_parts(bi.mfn_list as *const u64, nr_pages as usize) };
    let l4_va = bi.pt_base;
    let l4_mfn = p2m[(l4_va >> PAGE_SHIFT) as usize];

    // The allocator's bitmap lives in the first free frames, which are
    // inside the boot mapping (checked below).
    let first_free = bi.first_free_pfn();
    let words = FrameAllocator::words_for(nr_pages);
    let bm_pages = (words * 8).div_ceil(PAGE_SIZE) as u64;

    let mut probe = Memory {
        p2m,
        l4_mfn,
        l4_va,
        // placeholder over an empty bitmap, replaced right below
        frames: FrameAllocator::new(&mut [], 0, 0),
        io_next: IO_WINDOW,
        pt_frames_added: 0,
        heap_bytes: 0,
    };
    for p in first_free..first_free + bm_pages {
        if !probe.is_mapped(p << PAGE_SHIFT) {
            return Err(MmError::NotMapped(p << PAGE_SHIFT));
        }
    }
    // SAFETY: these frames are free (after everything Xen placed), mapped
    // writable, and from now on owned by the allocator only.
    let bits: &'static mut [u64] =
        unsafe { core::slice::from_raw_parts_mut((first_free << PAGE_SHIFT) as *mut u64, words) };
    probe.frames = FrameAllocator::new(bits, nr_pages, first_free + bm_pages);
    let mut mem = probe;
    // Xen places the rings and start_info below the boot page tables, but do
    // not rely on it: keep them out of the pool wherever they are.
    let mut special = [bi.start_info_va >> PAGE_SHIFT, u64::MAX, u64::MAX];
    if let Some((mfn, _)) = bi.store {
        special[1] = mfn_to_pfn(mfn);
    }
    if let resilire_boot::start_info::ConsoleKind::Ring { mfn, .. } = bi.console {
        special[2] = mfn_to_pfn(mfn);
    }
    for pfn in special {
        if pfn >= first_free + bm_pages && pfn < nr_pages {
            mem.frames.mark_used(pfn);
        }
    }

    let newly = mem.map_all(first_free)?;

    // Heap: an eighth of memory, between 1 and 64 MiB; page-granular data
    // (the checkpoint store, network buffers) uses the frame allocator. The
    // heap holds the store's page maps and, per connected primary, a few MiB
    // of protocol and decoder buffers (a first full epoch peaks near 4 MiB).
    let heap_pages = (nr_pages / 8)
        .clamp(256, 16384)
        .min(mem.frames.free_frames() / 2);
    let heap_pfn = mem
        .frames
        .alloc_contiguous(heap_pages)
        .ok_or(MmError::OutOfFrames)?;
    mem.heap_bytes = heap_pages * PAGE_SIZE as u64;
    // SAFETY: the run of frames is mapped writable (1:1), free, contiguous
    // and given to the heap for good.
    unsafe {
        HEAP.lock()
            .init((heap_pfn << PAGE_SHIFT) as *mut u8, mem.heap_bytes as usize)
    };

    let report = InitReport {
        nr_pages,
        first_free_pfn: first_free,
        newly_mapped: newly,
        pt_frames_added: mem.pt_frames_added,
        heap_bytes: mem.heap_bytes,
    };
    *MEMORY.lock() = Some(mem);
    Ok(report)
}

/// Unmaps virtual page 0 (null-pointer guard) and the lowest page of the boot
/// stack (overflow guard). Both frames are part of the image, never reused.
pub fn install_guards() -> Result<(), MmError> {
    let stack_bottom = core::ptr::addr_of!(resilire_boot::entry::__resilire_stack_bottom) as u64;
    for va in [0u64, stack_bottom] {
        // SAFETY: nothing lives in page 0 (the image starts at 0x1000) and the
        // lowest stack page is only touched on overflow.
        unsafe { hypercall::update_va_mapping(va, 0, abi::UVMF_INVLPG) }
            .map_err(|e| MmError::Xen("unmap guard page", e))?;
    }
    Ok(())
}

/// Maps a machine frame (shared_info, grant-table frames) in the IO window
/// and returns its virtual address.
pub fn map_foreign(mfn: u64, writable: bool) -> Result<*mut u8, MmError> {
    let mut g = MEMORY.lock();
    let mem = g.as_mut().expect("mm::init not run");
    let va = mem.io_next;
    let (slot, _) = mem.ensure_tables(va)?;
    let flags = if writable {
        DATA_PAGE
    } else {
        pte::PRESENT | pte::ACCESSED
    };
    let req = [MmuUpdate {
        ptr: slot | abi::MMU_NORMAL_PT_UPDATE,
        val: (mfn << PAGE_SHIFT) | flags | pte::NX,
    }];
    // SAFETY: fills an unused slot of the IO window.
    unsafe { hypercall::mmu_update(&req) }.map_err(|e| MmError::Xen("map foreign frame", e))?;
    mem.io_next += PAGE_SIZE as u64;
    Ok(va as *mut u8)
}

/// A page-granular allocation: the frame's PFN, MFN and virtual address.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Pseudo-physical frame number.
    pub pfn: u64,
    /// Machine frame number (what a grant or a backend needs).
    pub mfn: u64,
    /// Where it is mapped (writable).
    pub va: *mut u8,
}

/// The machine frame backing `pfn` of this domain (`u64::MAX` if none).
pub fn pfn_to_mfn(pfn: u64) -> u64 {
    MEMORY.lock().as_ref().map_or(INVALID_MFN, |m| m.mfn(pfn))
}

/// Allocates one page frame for storage.
pub fn alloc_frame() -> Option<Frame> {
    let mut g = MEMORY.lock();
    let mem = g.as_mut()?;
    let pfn = mem.frames.alloc()?;
    Some(Frame {
        pfn,
        mfn: mem.mfn(pfn),
        va: (pfn << PAGE_SHIFT) as *mut u8,
    })
}

/// Allocates `n` frames with consecutive PFNs, so mapped at consecutive
/// virtual addresses (large buffers kept out of the heap); returns the first.
pub fn alloc_contiguous(n: u64) -> Option<Frame> {
    let mut g = MEMORY.lock();
    let mem = g.as_mut()?;
    let pfn = mem.frames.alloc_contiguous(n)?;
    Some(Frame {
        pfn,
        mfn: mem.mfn(pfn),
        va: (pfn << PAGE_SHIFT) as *mut u8,
    })
}

/// Returns a frame obtained from [`alloc_frame`].
pub fn free_frame(f: Frame) {
    if let Some(mem) = MEMORY.lock().as_mut() {
        mem.frames.free(f.pfn);
    }
}

/// The heap: (size, free) in bytes.
pub fn heap_stats() -> (usize, usize) {
    let h = HEAP.lock();
    (h.size(), h.free())
}

/// Memory figures for the status.
pub fn report() -> MemoryReport {
    let g = MEMORY.lock();
    let Some(mem) = g.as_ref() else {
        return MemoryReport::default();
    };
    let total_kib = mem.frames.total_frames() * 4;
    let capacity_kib = mem.frames.free_frames() * 4;
    let heap_free_kib = HEAP.lock().free() as u64 / 1024;
    MemoryReport {
        total_kib,
        used_kib: total_kib - capacity_kib - heap_free_kib,
        capacity_kib,
    }
}
