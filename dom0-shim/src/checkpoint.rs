//! Taking checkpoints of a running PVH guest on the primary, Remus-style and
//! cooperative: the guest is asked to suspend (xenstore `control/shutdown`),
//! its dirty pages are copied while it sits at its suspend point, and it is
//! resumed with suspend-cancel. Encoding and shipping happen after it runs
//! again; the pause is only suspend + copy + resume.
//!
//! [`Checkpointer::capture_epoch`] is the one reusable "capture an epoch"
//! step; protect, migration and group checkpoints build on it.

use crate::xen::{DomainInfo, ForeignMemory, LogDirty, XenCtrl};
use crate::xenstore::Xenstore;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Bytes of a guest page.
pub const PAGE: usize = 4096;

/// Frames mapped per foreign-mapping call.
const MAP_BATCH: usize = 1024;

/// How long a guest may take to reach its suspend point.
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the time of one epoch's pause went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pause {
    /// From the suspend request to the domain's suspend shutdown.
    pub suspend: Duration,
    /// Reading the dirty bitmap and copying the dirty pages.
    pub copy: Duration,
    /// Capturing the vCPU/platform context and resuming.
    pub resume: Duration,
}

impl Pause {
    /// The whole pause.
    pub fn total(&self) -> Duration {
        self.suspend + self.copy + self.resume
    }
}

/// What one epoch captured.
pub struct Epoch {
    /// Epoch number (1 = the first consistent checkpoint).
    pub number: u64,
    /// The frames written since the previous epoch, ascending.
    pub dirty: Vec<u64>,
    /// The HVM context at the suspend point.
    pub hvm_context: Vec<u8>,
    /// The pause this epoch cost the guest.
    pub pause: Pause,
}

/// dom0's copy of a guest's memory, kept up to date epoch by epoch.
pub struct Checkpointer<'a> {
    xc: &'a XenCtrl,
    fm: &'a ForeignMemory,
    xs: &'a Xenstore,
    domid: u32,
    log_dirty: LogDirty<'a>,
    image: BTreeMap<u64, Box<[u8]>>,
    epoch: u64,
}

impl<'a> Checkpointer<'a> {
    /// Turns on log-dirty and copies the whole memory while the guest runs
    /// (the first pre-copy round); the first epoch then makes it consistent.
    pub fn start(xc: &'a XenCtrl, fm: &'a ForeignMemory, xs: &'a Xenstore, domid: u32) -> Result<Self> {
        let info: DomainInfo = xc.domain(domid)?;
        if !info.hvm {
            bail!("domain {domid} is PV: checkpoints need a PVH or HVM guest (log-dirty on PV is not built in this Xen)");
        }
        let log_dirty = xc.log_dirty(domid)?;
        let total = log_dirty.pages();
        let mut cp = Checkpointer { xc, fm, xs, domid, log_dirty, image: BTreeMap::new(), epoch: 0 };
        let all: Vec<u64> = (0..total).collect();
        cp.copy_frames(&all, true)?;
        Ok(cp)
    }

    /// Frames of guest memory held.
    pub fn pages(&self) -> usize {
        self.image.len()
    }

    /// Copies frames into the image; `discover` skips frames that do not map
    /// (holes) instead of failing.
    fn copy_frames(&mut self, pfns: &[u64], discover: bool) -> Result<()> {
        for batch in pfns.chunks(MAP_BATCH) {
            let m = self.fm.map(self.domid, batch)?;
            for (i, &pfn) in batch.iter().enumerate() {
                match m.page(i) {
                    Some(src) => match self.image.get_mut(&pfn) {
                        Some(dst) => dst.copy_from_slice(src),
                        None => {
                            self.image.insert(pfn, src.to_vec().into_boxed_slice());
                        }
                    },
                    None if discover => {}
                    None => {
                        // Dirty but unmappable: the guest gave the frame back
                        // (ballooning). Forget it.
                        self.image.remove(&pfn);
                    }
                }
            }
        }
        Ok(())
    }

    /// Asks the guest to suspend and waits until it has.
    fn suspend(&self) -> Result<()> {
        self.xs.write(&format!("/local/domain/{}/control/shutdown", self.domid), "suspend")?;
        let t0 = Instant::now();
        loop {
            if self.xc.is_suspended(self.domid)? {
                return Ok(());
            }
            if t0.elapsed() > SUSPEND_TIMEOUT {
                bail!("domain {} did not suspend within {:?}", self.domid, SUSPEND_TIMEOUT);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// One checkpoint: suspend, copy what changed, capture the context, resume.
    pub fn capture_epoch(&mut self) -> Result<Epoch> {
        self.capture_epoch_with(|_| Ok(()))
    }

    /// A checkpoint that also runs `at_suspend_point` on the fresh image
    /// while the guest is still suspended (verification, a final copy).
    fn capture_epoch_with(&mut self, at_suspend_point: impl FnOnce(&mut Self) -> Result<()>) -> Result<Epoch> {
        let t0 = Instant::now();
        self.suspend()?;
        let t1 = Instant::now();
        let copied = self.log_dirty.clean().and_then(|bitmap| {
            let dirty: Vec<u64> = bitmap.pfns().collect();
            self.copy_frames(&dirty, false)?;
            Ok(dirty)
        });
        let t2 = Instant::now();
        let context = self.xc.hvm_context(self.domid);
        let extra = if copied.is_ok() { at_suspend_point(self) } else { Ok(()) };
        // Resume whatever happened above: a guest left suspended is down.
        let t_resume = Instant::now();
        let resumed = self.xc.resume(self.domid, true).and_then(|_| self.xs.resume_domain(self.domid));
        let t3 = Instant::now();
        let dirty = copied?;
        let hvm_context = context?;
        extra?;
        resumed?;
        self.epoch += 1;
        Ok(Epoch {
            number: self.epoch,
            dirty,
            hvm_context,
            pause: Pause { suspend: t1 - t0, copy: t2 - t1, resume: t3 - t_resume },
        })
    }

    /// Takes one more checkpoint and, before resuming the guest, compares
    /// the held image with its memory page by page. Frames that backends
    /// wrote while it was suspended (grant copies of incoming packets) are
    /// marked dirty again and are the next epoch's: they are counted, not
    /// failed. Returns (pages compared, pages changed by backends).
    pub fn verify_against_guest(&mut self) -> Result<(usize, usize)> {
        let mut outcome = (0, 0);
        let epoch = self.capture_epoch_with(|cp| {
            outcome = cp.compare_all()?;
            Ok(())
        })?;
        println!(
            "verify: epoch {} image equals guest memory ({} pages; {} written by backends during the suspend)",
            epoch.number, outcome.0, outcome.1
        );
        Ok(outcome)
    }

    fn compare_all(&mut self) -> Result<(usize, usize)> {
        let pfns: Vec<u64> = self.image.keys().copied().collect();
        // (frame, bytes that differ)
        let mut differ: Vec<(u64, usize)> = Vec::new();
        for batch in pfns.chunks(MAP_BATCH) {
            let m = self.fm.map(self.domid, batch)?;
            for (i, pfn) in batch.iter().enumerate() {
                let live = m.page(i).with_context(|| format!("frame {pfn:#x} no longer maps"))?;
                let held = &self.image[pfn];
                if live != &held[..] {
                    let n = (0..PAGE).filter(|&o| live[o] != held[o]).count();
                    differ.push((*pfn, n));
                }
            }
        }
        if differ.is_empty() {
            return Ok((pfns.len(), 0));
        }
        let logged: std::collections::BTreeSet<u64> = self.log_dirty.peek()?.pfns().collect();
        let unlogged: Vec<(u64, usize)> = differ.iter().copied().filter(|(p, _)| !logged.contains(p)).collect();
        // Xen writes each vCPU's time info (the pvclock in the vcpu_info the
        // guest registered) directly, without log-dirty, at every resume: a
        // few bytes of one frame per vCPU. A restore does not need them (the
        // guest re-registers vcpu_info and Xen rewrites them). Anything
        // beyond that is a capture bug.
        let hypervisor_time = |&(_, n): &(u64, usize)| n <= MAX_PVCLOCK_BYTES;
        if unlogged.len() > MAX_PVCLOCK_FRAMES || !unlogged.iter().all(hypervisor_time) {
            bail!(
                "{} frame(s) differ between the checkpoint and the suspended guest without being logged dirty: {:x?}",
                unlogged.len(),
                &unlogged[..unlogged.len().min(8)]
            );
        }
        for (pfn, n) in &unlogged {
            println!("verify: frame {pfn:#x}: {n} byte(s) of hypervisor-written time info differ (not log-dirty tracked)");
        }
        Ok((pfns.len(), differ.len() - unlogged.len()))
    }
}

/// Frames (one per vCPU) and bytes in each that Xen may write behind
/// log-dirty's back: see `compare_all`.
const MAX_PVCLOCK_FRAMES: usize = 4;
const MAX_PVCLOCK_BYTES: usize = 16;

/// Median and 99th percentile of a list of durations.
pub fn median_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_small_list() {
        let ms = |x| Duration::from_millis(x);
        let (m, p) = median_p99(vec![ms(5), ms(1), ms(3), ms(100), ms(2)]);
        assert_eq!((m, p), (ms(3), ms(100)));
        assert_eq!(median_p99(vec![]), (Duration::ZERO, Duration::ZERO));
    }
}
