//! Console output: the PV console ring of a domU, or the hypervisor console
//! (`HYPERVISOR_console_io`) when booted as dom0 (smoke tests).
//!
//! Output goes through one global `spin::Mutex`; the panic path may steal the
//! lock, since the appliance is single-threaded and a panic while printing
//! must still be reported.

use core::fmt;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{fence, Ordering};
use resilire_appliance::ring;
use resilire_boot::abi::XenconsInterface;
use resilire_boot::hypercall;
use spin::Mutex;

use super::{events, time};

enum Sink {
    Hypervisor,
    Ring {
        intf: *mut XenconsInterface,
        port: u32,
    },
}

// SAFETY: the ring pointer refers to the console page, mapped for the whole
// life of the domain; the appliance runs on a single vCPU.
unsafe impl Send for Sink {}

static CONSOLE: Mutex<Option<Sink>> = Mutex::new(None);

/// Sends console output to the hypervisor console (dom0).
pub fn init_hypervisor() {
    *CONSOLE.lock() = Some(Sink::Hypervisor);
}

/// Sends console output to the PV console ring at `intf` (a virtual address
/// of the console page), notifying `port`.
///
/// # Safety
/// `intf` must map the domain's console ring page for the rest of its life.
pub unsafe fn init_ring(intf: *mut XenconsInterface, port: u32) {
    *CONSOLE.lock() = Some(Sink::Ring { intf, port });
}

fn ring_write(intf: *mut XenconsInterface, port: u32, mut bytes: &[u8]) {
    // A console daemon that stops reading must not hang the appliance: give
    // up on the rest of a write after ~200 ms without progress.
    let mut stalls = 0u32;
    while !bytes.is_empty() {
        // SAFETY: `intf` is the mapped console page (see init_ring). Indices
        // are read with volatile loads and ordered with fences: the daemon in
        // dom0 updates out_cons concurrently.
        let n = unsafe {
            let cons = core::ptr::read_volatile(addr_of!((*intf).out_cons));
            let prod = core::ptr::read_volatile(addr_of!((*intf).out_prod));
            fence(Ordering::Acquire);
            let out = &mut *addr_of_mut!((*intf).output);
            match ring::produce(out, prod, cons, bytes) {
                Ok(n) if n > 0 => {
                    fence(Ordering::Release);
                    core::ptr::write_volatile(
                        addr_of_mut!((*intf).out_prod),
                        prod.wrapping_add(n as u32),
                    );
                    n
                }
                Ok(_) => 0,
                Err(_) => return, // corrupt indices: drop output rather than loop
            }
        };
        if n > 0 {
            bytes = &bytes[n..];
            stalls = 0;
            let _ = hypercall::evtchn_send(port);
        } else {
            stalls += 1;
            if stalls > 20 {
                return;
            }
            let _ = hypercall::evtchn_send(port);
            events::wait(&[port], time::now_ns().saturating_add(10_000_000));
        }
    }
}

fn write_to(sink: &Sink, bytes: &[u8]) {
    match *sink {
        Sink::Hypervisor => {
            let _ = hypercall::console_write(bytes);
        }
        Sink::Ring { intf, port } => ring_write(intf, port, bytes),
    }
}

/// Writes raw bytes to the console (dropped before [`init_ring`] /
/// [`init_hypervisor`], except on dom0 where Xen's console always works).
pub fn write_bytes(bytes: &[u8]) {
    match CONSOLE.lock().as_ref() {
        Some(s) => write_to(s, bytes),
        None => {
            let _ = hypercall::console_write(bytes);
        }
    }
}

/// Writes from the panic handler: takes the lock even if it is held.
pub fn panic_write(args: fmt::Arguments) {
    if CONSOLE.is_locked() {
        // SAFETY: single vCPU; whoever held the lock is the code that
        // panicked and will never resume.
        unsafe { CONSOLE.force_unlock() };
    }
    let _ = fmt::write(&mut Writer, args);
}

/// A `fmt::Write` adapter over [`write_bytes`].
pub struct Writer;

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    // Format into a buffer first so one line is one ring write.
    let mut buf = Buf { b: [0; 256], n: 0 };
    if fmt::write(&mut buf, args).is_ok() {
        write_bytes(&buf.b[..buf.n]);
    } else {
        let _ = fmt::write(&mut Writer, args);
    }
}

struct Buf {
    b: [u8; 256],
    n: usize,
}

impl fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let s = s.as_bytes();
        if self.n + s.len() > self.b.len() {
            return Err(fmt::Error);
        }
        self.b[self.n..self.n + s.len()].copy_from_slice(s);
        self.n += s.len();
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::pv::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::pv::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
