//! A validated, owned copy of the `start_info` page.
//!
//! Xen passes a PV kernel the virtual address of `start_info` in `%rsi`. The
//! entry code hands that pointer to the appliance, which calls
//! [`BootInfo::parse`] once, before anything else, and from then on only uses
//! the copy: the page itself is later reused like any other boot page.

use crate::abi::{self, StartInfo};

/// Where the domain's console lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKind {
    /// dom0: no ring, write through `HYPERVISOR_console_io`.
    Hypervisor,
    /// domU: a PV console ring page and its event channel.
    Ring {
        /// Machine frame of the ring page.
        mfn: u64,
        /// Event channel to notify xenconsoled.
        evtchn: u32,
    },
}

/// Why a start_info page was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// The magic string does not start with "xen-".
    BadMagic,
    /// The domain has no pages, or fewer than its own boot mapping.
    BadPageCount,
    /// The page-table base or p2m list is not page aligned / missing.
    BadLayout,
}

/// The parts of `start_info` the appliance uses.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// "xen-<version>-<platform>" as given by Xen (up to 32 bytes).
    pub magic: [u8; 32],
    /// Total pages of the domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info_maddr: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Xenstore ring MFN and event channel (domU only; `None` for dom0).
    pub store: Option<(u64, u32)>,
    /// The console.
    pub console: ConsoleKind,
    /// Virtual address of the L4 boot page table.
    pub pt_base: u64,
    /// Number of boot page-table frames (they follow `pt_base`).
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn -> mfn array (`nr_pages` entries).
    pub mfn_list: u64,
    /// Virtual address of the start_info page itself.
    pub start_info_va: u64,
    /// Kernel command line (up to the first NUL).
    pub cmd_line: [u8; 1024],
    /// Length of `cmd_line` in bytes.
    pub cmd_line_len: usize,
}

impl BootInfo {
    /// Validates and copies a start_info structure found at virtual address `va`.
    pub fn parse(si: &StartInfo, va: u64) -> Result<BootInfo, StartInfoError> {
        if &si.magic[..4] != b"xen-" {
            return Err(StartInfoError::BadMagic);
        }
        if si.nr_pages == 0 || si.nr_pt_frames == 0 {
            return Err(StartInfoError::BadPageCount);
        }
        let align = abi::PAGE_SIZE as u64 - 1;
        if si.pt_base & align != 0 || si.mfn_list == 0 || si.mfn_list & 7 != 0 {
            return Err(StartInfoError::BadLayout);
        }
        let dom0 = si.flags & abi::sif::INITDOMAIN != 0;
        let console = if dom0 || si.console.word0 == 0 {
            ConsoleKind::Hypervisor
        } else {
            ConsoleKind::Ring {
                mfn: si.console.word0,
                evtchn: si.console.evtchn,
            }
        };
        let store = if dom0 || si.store_mfn == 0 {
            None
        } else {
            Some((si.store_mfn, si.store_evtchn))
        };
        let cmd_line_len = si
            .cmd_line
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(si.cmd_line.len());
        Ok(BootInfo {
            magic: si.magic,
            nr_pages: si.nr_pages,
            shared_info_maddr: si.shared_info,
            flags: si.flags,
            store,
            console,
            pt_base: si.pt_base,
            nr_pt_frames: si.nr_pt_frames,
            mfn_list: si.mfn_list,
            start_info_va: va,
            cmd_line: si.cmd_line,
            cmd_line_len,
        })
    }

    /// True when booted as the initial domain (dom0).
    pub fn is_dom0(&self) -> bool {
        self.flags & abi::sif::INITDOMAIN != 0
    }

    /// The magic string, e.g. "xen-3.0-x86_64".
    pub fn magic_str(&self) -> &str {
        let n = self
            .magic
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.magic.len());
        core::str::from_utf8(&self.magic[..n]).unwrap_or("?")
    }

    /// The command line (lossy: invalid UTF-8 yields "").
    pub fn cmd_line_str(&self) -> &str {
        core::str::from_utf8(&self.cmd_line[..self.cmd_line_len]).unwrap_or("")
    }

    /// First PFN after everything Xen placed in the boot mapping (kernel, p2m
    /// list, start_info, rings, boot page tables). With `virt_base` = 0 a PFN's
    /// boot virtual address is `pfn << 12`.
    pub fn first_free_pfn(&self) -> u64 {
        let pt_end = (self.pt_base >> abi::PAGE_SHIFT) + self.nr_pt_frames;
        let p2m_end =
            (self.mfn_list + self.nr_pages * 8 + abi::PAGE_SIZE as u64 - 1) >> abi::PAGE_SHIFT;
        let si_end = (self.start_info_va >> abi::PAGE_SHIFT) + 1;
        pt_end.max(p2m_end).max(si_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StartInfo {
        // SAFETY (test): StartInfo is plain old data; all-zero is a valid value.
        let mut si: StartInfo = unsafe { core::mem::zeroed() };
        si.magic[..14].copy_from_slice(b"xen-3.0-x86_64");
        si.nr_pages = 16384;
        si.shared_info = 0x1234_5000;
        si.store_mfn = 0x4242;
        si.store_evtchn = 1;
        si.console.word0 = 0x4243;
        si.console.evtchn = 2;
        si.pt_base = 0x0050_0000;
        si.nr_pt_frames = 6;
        si.mfn_list = 0x0040_0000;
        si.cmd_line[..5].copy_from_slice(b"quiet");
        si
    }

    #[test]
    fn parses_a_domu_start_info() {
        let bi = BootInfo::parse(&sample(), 0x4f_f000).unwrap();
        assert!(!bi.is_dom0());
        assert_eq!(bi.magic_str(), "xen-3.0-x86_64");
        assert_eq!(bi.store, Some((0x4242, 1)));
        assert_eq!(
            bi.console,
            ConsoleKind::Ring {
                mfn: 0x4243,
                evtchn: 2
            }
        );
        assert_eq!(bi.cmd_line_str(), "quiet");
        // pt_base pfn 0x500 + 6 frames
        assert_eq!(bi.first_free_pfn(), 0x506);
    }

    #[test]
    fn dom0_uses_the_hypervisor_console_and_has_no_store() {
        let mut si = sample();
        si.flags = abi::sif::INITDOMAIN | abi::sif::PRIVILEGED;
        let bi = BootInfo::parse(&si, 0x4f_f000).unwrap();
        assert!(bi.is_dom0());
        assert_eq!(bi.console, ConsoleKind::Hypervisor);
        assert_eq!(bi.store, None);
    }

    #[test]
    fn rejects_garbage() {
        let mut si = sample();
        si.magic[0] = b'y';
        assert_eq!(
            BootInfo::parse(&si, 0).unwrap_err(),
            StartInfoError::BadMagic
        );
        let mut si = sample();
        si.nr_pages = 0;
        assert_eq!(
            BootInfo::parse(&si, 0).unwrap_err(),
            StartInfoError::BadPageCount
        );
        let mut si = sample();
        si.pt_base += 8;
        assert_eq!(
            BootInfo::parse(&si, 0).unwrap_err(),
            StartInfoError::BadLayout
        );
    }

    #[test]
    fn first_free_pfn_covers_a_p2m_list_placed_last() {
        let mut si = sample();
        si.mfn_list = 0x0060_0000; // 16384 * 8 = 128 KiB = 32 pages
        let bi = BootInfo::parse(&si, 0x4f_f000).unwrap();
        assert_eq!(bi.first_free_pfn(), 0x600 + 32);
    }
}
