//! Mapping another domain's pages into dom0 (libxenforeignmemory): how the
//! primary copies a suspended guest's dirty pages without a bounce through
//! the hypervisor.

use super::ffi;
use anyhow::{bail, Result};
use std::io;

/// Bytes of a guest page.
pub const PAGE: usize = 4096;

/// A handle to `/dev/xen/privcmd` for foreign mappings.
pub struct ForeignMemory {
    h: *mut ffi::xenforeignmemory_handle,
}

/// Pages of one domain mapped read-only into dom0, in the order asked.
pub struct Mapping<'a> {
    fm: &'a ForeignMemory,
    addr: *mut u8,
    pages: usize,
    errors: Vec<i32>,
}

impl ForeignMemory {
    /// Opens the interface.
    pub fn open() -> Result<ForeignMemory> {
        // SAFETY: null logger selects the default; flags 0.
        let h = unsafe { ffi::xenforeignmemory_open(std::ptr::null_mut(), 0) };
        if h.is_null() {
            bail!(
                "cannot open xenforeignmemory: {}",
                io::Error::last_os_error()
            );
        }
        Ok(ForeignMemory { h })
    }

    /// Maps guest frames `pfns` of `domid` read-only. Frames that cannot be
    /// mapped (holes, not populated) are reported by [`Mapping::page`] as
    /// `None` rather than failing the whole batch.
    pub fn map(&self, domid: u32, pfns: &[u64]) -> Result<Mapping<'_>> {
        let arr: Vec<std::os::raw::c_ulong> = pfns.iter().map(|&p| p as _).collect();
        let mut errors = vec![0i32; pfns.len()];
        // SAFETY: arr and errors hold pfns.len() entries each.
        let addr = unsafe {
            ffi::xenforeignmemory_map(
                self.h,
                domid,
                1, /* PROT_READ */
                arr.len(),
                arr.as_ptr(),
                errors.as_mut_ptr(),
            )
        };
        if addr.is_null() {
            bail!(
                "mapping {} frames of domain {domid}: {}",
                pfns.len(),
                io::Error::last_os_error()
            );
        }
        Ok(Mapping {
            fm: self,
            addr: addr as *mut u8,
            pages: pfns.len(),
            errors,
        })
    }
}

impl Drop for ForeignMemory {
    fn drop(&mut self) {
        // SAFETY: h came from xenforeignmemory_open and is closed once.
        unsafe { ffi::xenforeignmemory_close(self.h) };
    }
}

impl Mapping<'_> {
    /// The content of the i-th frame asked for, or `None` if it did not map.
    pub fn page(&self, i: usize) -> Option<&[u8]> {
        if i >= self.pages || self.errors[i] != 0 {
            return None;
        }
        // SAFETY: the mapping covers `pages` pages and lives as long as self.
        Some(unsafe { std::slice::from_raw_parts(self.addr.add(i * PAGE), PAGE) })
    }
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what xenforeignmemory_map returned.
        unsafe { ffi::xenforeignmemory_unmap(self.fm.h, self.addr as *mut _, self.pages) };
    }
}
