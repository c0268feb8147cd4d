//! resilire-boot: the lowest layer of the Resilire appliance, a Xen PV guest.
//!
//! What lives here, and only here:
//! - [`abi`]: `#[repr(C)]` mirrors of the Xen public ABI structures the appliance
//!   touches (start_info, shared_info, console and xenstore rings, grant entries)
//!   and the hypercall / flag numbers. Pure data, host-testable (layout tests).
//! - [`start_info`]: a safe, validated copy of the `start_info` page Xen hands
//!   to a PV kernel at entry.
//! - [`hypercall`] (target only): the typed hypercall wrappers that call into
//!   the hypercall page Xen fills in.
//! - [`entry`] (target only): the ELF notes that make the image loadable as a
//!   PV kernel, the hypercall page, the boot stack and the `_start` symbol.
//!
//! The crate is `no_std` on the target and uses `std` only for its host tests.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod abi;
pub mod start_info;

#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
pub mod hypercall;
