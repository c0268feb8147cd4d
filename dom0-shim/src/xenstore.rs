//! dom0's xenstore client through libxenstore: the one module of the shim
//! holding `unsafe` for xenstore. Used for the appliance's configuration and
//! status and for asking guests to suspend.

use anyhow::{bail, Result};
use std::ffi::{CStr, CString};
use std::io;
use std::os::raw::{c_char, c_uint, c_ulong, c_void};

#[allow(non_camel_case_types)]
#[repr(C)]
struct xs_handle {
    _private: [u8; 0],
}

#[repr(C)]
struct XsPermissions {
    id: c_uint,
    perms: c_uint,
}

const XBT_NULL: u32 = 0;
const XS_PERM_NONE: c_uint = 0;
const XS_PERM_READ: c_uint = 1;

#[link(name = "xenstore")]
extern "C" {
    fn xs_open(flags: c_ulong) -> *mut xs_handle;
    fn xs_close(h: *mut xs_handle);
    fn xs_read(h: *mut xs_handle, t: u32, path: *const c_char, len: *mut c_uint) -> *mut c_void;
    fn xs_write(
        h: *mut xs_handle,
        t: u32,
        path: *const c_char,
        data: *const c_void,
        len: c_uint,
    ) -> bool;
    fn xs_rm(h: *mut xs_handle, t: u32, path: *const c_char) -> bool;
    fn xs_directory(
        h: *mut xs_handle,
        t: u32,
        path: *const c_char,
        num: *mut c_uint,
    ) -> *mut *mut c_char;
    fn xs_set_permissions(
        h: *mut xs_handle,
        t: u32,
        path: *const c_char,
        perms: *mut XsPermissions,
        num: c_uint,
    ) -> bool;
    fn xs_transaction_start(h: *mut xs_handle) -> u32;
    fn xs_transaction_end(h: *mut xs_handle, t: u32, abort: bool) -> bool;
    fn xs_resume_domain(h: *mut xs_handle, domid: c_uint) -> bool;
    fn free(p: *mut c_void);
}

/// A connection to xenstored.
pub struct Xenstore {
    h: *mut xs_handle,
}

fn cpath(path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| anyhow::anyhow!("xenstore path with a NUL byte: {path:?}"))
}

impl Xenstore {
    /// Connects to xenstored (socket or /dev/xen/xenbus).
    pub fn open() -> Result<Xenstore> {
        // SAFETY: plain call; flags 0 = read-write, any transport.
        let h = unsafe { xs_open(0) };
        if h.is_null() {
            bail!(
                "cannot connect to xenstored: {}",
                io::Error::last_os_error()
            );
        }
        Ok(Xenstore { h })
    }

    /// Reads a node; `None` if it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<String>> {
        let p = cpath(path)?;
        let mut len: c_uint = 0;
        // SAFETY: p is NUL-terminated; the result is malloc'ed and freed below.
        let v = unsafe { xs_read(self.h, XBT_NULL, p.as_ptr(), &mut len) };
        if v.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc_enoent()) {
                return Ok(None);
            }
            bail!("xenstore read {path}: {e}");
        }
        // SAFETY: xs_read returned `len` readable bytes at v.
        let s = unsafe {
            String::from_utf8_lossy(std::slice::from_raw_parts(v as *const u8, len as usize))
                .into_owned()
        };
        // SAFETY: v was allocated by libxenstore with malloc.
        unsafe { free(v) };
        Ok(Some(s))
    }

    /// Writes a node (creating parents).
    pub fn write(&self, path: &str, value: &str) -> Result<()> {
        self.write_in(XBT_NULL, path, value)
    }

    fn write_in(&self, t: u32, path: &str, value: &str) -> Result<()> {
        let p = cpath(path)?;
        // SAFETY: p is NUL-terminated, value's bytes are valid for its length.
        if !unsafe {
            xs_write(
                self.h,
                t,
                p.as_ptr(),
                value.as_ptr() as *const c_void,
                value.len() as c_uint,
            )
        } {
            bail!("xenstore write {path}: {}", io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes a node and its children (absent is fine).
    pub fn rm(&self, path: &str) -> Result<()> {
        let p = cpath(path)?;
        // SAFETY: p is NUL-terminated.
        if !unsafe { xs_rm(self.h, XBT_NULL, p.as_ptr()) } {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc_enoent()) {
                bail!("xenstore rm {path}: {e}");
            }
        }
        Ok(())
    }

    /// Children of a node; empty if it does not exist.
    pub fn directory(&self, path: &str) -> Result<Vec<String>> {
        let p = cpath(path)?;
        let mut num: c_uint = 0;
        // SAFETY: p is NUL-terminated; the result is one malloc'ed block.
        let v = unsafe { xs_directory(self.h, XBT_NULL, p.as_ptr(), &mut num) };
        if v.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc_enoent()) {
                return Ok(Vec::new());
            }
            bail!("xenstore directory {path}: {e}");
        }
        // SAFETY: v holds `num` pointers to NUL-terminated strings in the same block.
        let out = (0..num as usize)
            .map(|i| {
                unsafe { CStr::from_ptr(*v.add(i)) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        // SAFETY: one block allocated by libxenstore with malloc.
        unsafe { free(v as *mut c_void) };
        Ok(out)
    }

    /// Makes a node owned by `owner` and readable by `reader` only (xenstore
    /// permissions: the first entry is the owner and the default for others).
    pub fn restrict(&self, path: &str, owner: u32, reader: u32) -> Result<()> {
        let p = cpath(path)?;
        let mut perms = [
            XsPermissions {
                id: owner,
                perms: XS_PERM_NONE,
            },
            XsPermissions {
                id: reader,
                perms: XS_PERM_READ,
            },
        ];
        // SAFETY: perms is a valid array of 2 entries.
        if !unsafe { xs_set_permissions(self.h, XBT_NULL, p.as_ptr(), perms.as_mut_ptr(), 2) } {
            bail!(
                "xenstore set permissions on {path}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Writes several nodes atomically, retrying when another writer races.
    pub fn write_all(&self, nodes: &[(String, String)]) -> Result<()> {
        for _attempt in 0..16 {
            // SAFETY: plain call; 0 means failure.
            let t = unsafe { xs_transaction_start(self.h) };
            if t == 0 {
                bail!("xenstore transaction start: {}", io::Error::last_os_error());
            }
            let mut res = Ok(());
            for (k, v) in nodes {
                res = self.write_in(t, k, v);
                if res.is_err() {
                    break;
                }
            }
            if let Err(e) = res {
                // SAFETY: abort the transaction we started.
                unsafe { xs_transaction_end(self.h, t, true) };
                return Err(e);
            }
            // SAFETY: commit the transaction we started.
            if unsafe { xs_transaction_end(self.h, t, false) } {
                return Ok(());
            }
            if io::Error::last_os_error().raw_os_error() != Some(11) {
                bail!(
                    "xenstore transaction commit: {}",
                    io::Error::last_os_error()
                );
            }
        }
        bail!("xenstore transaction kept conflicting (EAGAIN 16 times)")
    }
}

impl Xenstore {
    /// Tells xenstored that a domain which shut down for a suspend runs
    /// again. Without it xenstored keeps the domain marked as shut down and
    /// never fires `@releaseDomain` for its next suspend, which is what
    /// libxl (and so `xl save`, Remus) waits for.
    pub fn resume_domain(&self, domid: u32) -> Result<()> {
        // SAFETY: plain call.
        if !unsafe { xs_resume_domain(self.h, domid) } {
            bail!(
                "xenstore resume of domain {domid}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

fn libc_enoent() -> i32 {
    2
}

impl Drop for Xenstore {
    fn drop(&mut self) {
        // SAFETY: h came from xs_open and is closed once.
        unsafe { xs_close(self.h) };
    }
}
