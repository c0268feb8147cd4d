//! The Resilire appliance: a Xen PV unikernel.
//!
//! Boot sequence (see `resilire_start`): parse start_info, console, memory
//! (page tables over all pages, heap, frame allocator), shared_info and time,
//! guard pages, grant table; then either the dom0 smoke test or, as a domU,
//! the xenstore-driven configuration / status loop of [`app`].
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("resilire-appliance is a Xen PV kernel: build it with --target x86_64-unknown-none");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod app;
#[cfg(target_os = "none")]
mod net;
#[cfg(target_os = "none")]
mod pv;

#[cfg(target_os = "none")]
mod kernel {
    use crate::pv::{console, events, gnttab, logger, mm, time};
    use crate::{app, println};
    use log::{info, warn};
    use resilire_boot::abi::{self, SharedInfo, StartInfo, XenconsInterface};
    use resilire_boot::hypercall;
    use resilire_boot::start_info::{BootInfo, ConsoleKind};

    /// Called by `_start` (boot/src/entry.rs) on the boot stack.
    #[no_mangle]
    pub extern "C" fn resilire_start(si: *const StartInfo) -> ! {
        // SAFETY: Xen passes the virtual address of a mapped start_info page.
        let parsed = BootInfo::parse(unsafe { &*si }, si as u64);
        let bi = match parsed {
            Ok(bi) => bi,
            Err(_) => {
                let _ = hypercall::console_write(b"resilire: invalid start_info\n");
                crash();
            }
        };
        match bi.console {
            ConsoleKind::Hypervisor => console::init_hypervisor(),
            // SAFETY: the console ring page is in the boot mapping at
            // pfn << 12 and stays there for the domain's life.
            ConsoleKind::Ring { mfn, evtchn } => unsafe {
                console::init_ring(mm::mfn_to_va(mfn) as *mut XenconsInterface, evtchn)
            },
        }
        logger::init(log::LevelFilter::Info);
        let (maj, min) = hypercall::xen_version();
        println!(
            "Resilire appliance {} booting: Xen {}.{} ({}), {} as {}, {} pages",
            resilire_appliance::VERSION,
            maj,
            min,
            bi.magic_str(),
            "PV",
            if bi.is_dom0() {
                "dom0 (smoke test)"
            } else {
                "domU"
            },
            bi.nr_pages
        );

        let r = mm::init(&bi).unwrap_or_else(|e| panic!("memory init: {e}"));
        let si_va = mm::map_foreign(bi.shared_info_maddr >> abi::PAGE_SHIFT, true)
            .unwrap_or_else(|e| panic!("mapping shared_info: {e}"));
        // SAFETY: si_va maps this domain's shared_info page from now on.
        unsafe { events::init(si_va as *mut SharedInfo) };
        time::mark_boot();
        if let Err(e) = mm::install_guards() {
            warn!("guard pages: {e}");
        }
        info!(
            "memory: {} pages ({} KiB), boot mapping ended at pfn {}, mapped {} more pages with {} new page-table frames, heap {} KiB",
            r.nr_pages,
            r.nr_pages * 4,
            r.first_free_pfn,
            r.newly_mapped,
            r.pt_frames_added,
            r.heap_bytes / 1024
        );
        let m = mm::report();
        info!(
            "capacity: total {} KiB, used {} KiB, free for storage {} KiB",
            m.total_kib, m.used_kib, m.capacity_kib
        );
        match gnttab::init() {
            Ok((frames, entries, max)) => {
                info!("grant table: {frames} frame(s), {entries} entries (max {max} frames)")
            }
            Err(e) => warn!("grant table unavailable: {e}"),
        }
        if bi
            .cmd_line_str()
            .split_whitespace()
            .any(|w| w == "resilire.test=panic")
        {
            // exercises the panic path (console report + SHUTDOWN_crash)
            panic!("test panic requested on the command line");
        }
        if bi.is_dom0() {
            app::dom0_smoke()
        } else {
            app::run(&bi)
        }
    }

    /// Shuts the domain down with reason "crash"; never returns.
    pub fn crash() -> ! {
        loop {
            let _ = hypercall::sched_shutdown(abi::shutdown::CRASH);
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        console::panic_write(format_args!("\n*** resilire-appliance PANIC: {info}\n"));
        crash()
    }
}
