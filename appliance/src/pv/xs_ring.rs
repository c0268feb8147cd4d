//! The xenstore ring page as a [`Transport`] for the xenstore client.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, AtomicU32, Ordering};
use resilire_appliance::ring;
use resilire_appliance::xenstore::Transport;
use resilire_appliance::xs_wire::XsError;
use resilire_boot::abi::{XenstoreDomainInterface, XENSTORE_RING_SIZE};

use super::{events, time};

/// Silence after which the event channel is notified again.
const KICK_AFTER_NS: u64 = 1_000_000_000;
/// How many times that happened (for the log).
static KICKS: AtomicU32 = AtomicU32::new(0);

/// The domain's xenstore ring and its event channel.
pub struct XsRing {
    intf: *mut XenstoreDomainInterface,
    port: u32,
    /// How long a request may wait for ring space or a reply.
    pub timeout_ns: u64,
}

impl XsRing {
    /// Wraps the ring page mapped at `intf`.
    ///
    /// # Safety
    /// `intf` must map the domain's xenstore page for the life of the value.
    pub unsafe fn new(intf: *mut XenstoreDomainInterface, port: u32) -> XsRing {
        events::mask(port);
        XsRing {
            intf,
            port,
            timeout_ns: 30_000_000_000,
        }
    }

    fn wait_until(&self, deadline: u64) -> Result<(), XsError> {
        if time::now_ns() >= deadline {
            // SAFETY: as in `send`: volatile reads of the shared indices.
            let (rq_c, rq_p, rs_c, rs_p) = unsafe {
                (
                    read_volatile(addr_of!((*self.intf).req_cons)),
                    read_volatile(addr_of!((*self.intf).req_prod)),
                    read_volatile(addr_of!((*self.intf).rsp_cons)),
                    read_volatile(addr_of!((*self.intf).rsp_prod)),
                )
            };
            log::warn!(
                "xenstore ring timed out: req cons/prod {rq_c}/{rq_p}, rsp cons/prod {rs_c}/{rs_p}, port {} pending {}",
                self.port,
                events::is_pending(self.port)
            );
            return Err(XsError::Timeout);
        }
        // If a notification got lost on the way to xenstored (seen in the
        // lab: the request sat unconsumed in the ring, no reply pending) the
        // ring would stall until the timeout. Kicking the channel again after
        // each second without news is harmless and unsticks it.
        let slice_end = deadline.min(time::now_ns() + KICK_AFTER_NS);
        events::wait(&[self.port], slice_end);
        if !events::is_pending(self.port) && time::now_ns() >= slice_end && slice_end < deadline {
            let kicks = KICKS.fetch_add(1, Ordering::Relaxed) + 1;
            if kicks.is_power_of_two() {
                log::warn!(
                    "xenstore: no news for 1 s, notifying xenstored again ({kicks} time(s) so far)"
                );
            }
            events::notify(self.port);
        }
        Ok(())
    }
}

impl Transport for XsRing {
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
        let deadline = time::now_ns().saturating_add(self.timeout_ns);
        let mut off = 0;
        while off < msg.len() {
            events::clear(self.port);
            // SAFETY: `intf` maps the xenstore page (see `new`). xenstored
            // moves req_cons concurrently: indices are read volatile and the
            // data copy is ordered before the producer update by a fence.
            let n = unsafe {
                let cons = read_volatile(addr_of!((*self.intf).req_cons));
                let prod = read_volatile(addr_of!((*self.intf).req_prod));
                fence(Ordering::Acquire);
                let req: &mut [u8; XENSTORE_RING_SIZE] = &mut *addr_of_mut!((*self.intf).req);
                let n = ring::produce(req, prod, cons, &msg[off..])
                    .map_err(|_| XsError::Transport("request ring indices corrupt"))?;
                if n > 0 {
                    fence(Ordering::Release);
                    write_volatile(
                        addr_of_mut!((*self.intf).req_prod),
                        prod.wrapping_add(n as u32),
                    );
                }
                n
            };
            if n > 0 {
                off += n;
                events::notify(self.port);
            } else {
                self.wait_until(deadline)?;
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], wait: bool) -> Result<usize, XsError> {
        let deadline = time::now_ns().saturating_add(self.timeout_ns);
        loop {
            events::clear(self.port);
            // SAFETY: as in `send`; the copy out happens after the Acquire
            // fence that follows the producer read, and the consumer update
            // after a fence that orders the copy before it.
            let n = unsafe {
                let prod = read_volatile(addr_of!((*self.intf).rsp_prod));
                let cons = read_volatile(addr_of!((*self.intf).rsp_cons));
                fence(Ordering::Acquire);
                let rsp: &[u8; XENSTORE_RING_SIZE] = &*addr_of!((*self.intf).rsp);
                let n = ring::consume(rsp, prod, cons, buf)
                    .map_err(|_| XsError::Transport("response ring indices corrupt"))?;
                if n > 0 {
                    fence(Ordering::Release);
                    write_volatile(
                        addr_of_mut!((*self.intf).rsp_cons),
                        cons.wrapping_add(n as u32),
                    );
                }
                n
            };
            if n > 0 {
                events::notify(self.port);
                return Ok(n);
            }
            if !wait || buf.is_empty() {
                return Ok(0);
            }
            self.wait_until(deadline)?;
        }
    }
}
