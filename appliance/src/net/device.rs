//! smoltcp's view of netfront: a [`phy::Device`] whose receive tokens point
//! straight into netfront's rx pages and whose transmit tokens build frames
//! in its granted tx pages (no copies in the driver).

use super::netfront::Netfront;
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The Ethernet MTU (netback's default, no scatter-gather).
pub const MTU: usize = 1514;

/// netfront as a smoltcp device.
pub struct NetDevice {
    /// The driver.
    pub nf: Netfront,
}

/// A received frame lent by netfront.
pub struct RxTok {
    ptr: *const u8,
    len: usize,
}

/// Permission to queue one frame on netfront.
pub struct TxTok<'a> {
    nf: &'a mut Netfront,
}

impl phy::Device for NetDevice {
    type RxToken<'a>
        = RxTok
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a>
    where
        Self: 'a;

    fn receive(&mut self, _ts: Instant) -> Option<(RxTok, TxTok<'_>)> {
        let (ptr, len) = self.nf.recv()?;
        Some((RxTok { ptr, len }, TxTok { nf: &mut self.nf }))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<TxTok<'_>> {
        if self.nf.can_send() {
            Some(TxTok { nf: &mut self.nf })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = None;
        // netback delivers frames with their checksums filled in (we
        // advertise no checksum offload) and expects the same from us.
        caps.checksum.ipv4 = Checksum::Both;
        caps.checksum.tcp = Checksum::Both;
        caps.checksum.icmpv4 = Checksum::Both;
        caps
    }
}

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // SAFETY: netfront keeps the buffer out of the ring until its next
        // recv()/kick(), which need `&mut NetDevice` and so cannot run while
        // smoltcp holds this token (it consumes tokens inside one poll step).
        f(unsafe { core::slice::from_raw_parts(self.ptr, self.len) })
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.nf.send_with(len, f)
    }
}
