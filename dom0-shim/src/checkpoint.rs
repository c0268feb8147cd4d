//! Taking checkpoints of a running PVH guest on the primary, Remus-style and
//! cooperative: the guest is asked to suspend (xenstore `control/shutdown`),
//! its dirty pages are copied while it sits at its suspend point, and it is
//! resumed with suspend-cancel. Encoding and shipping happen after it runs
//! again; the pause is only suspend + copy + resume.
//!
//! [`Checkpointer::capture_epoch`] is the one reusable "capture an epoch"
//! step; protect, migration and group checkpoints build on it.

use crate::vmstate::{self, VmState, MAX_HOT, TRAILER_PAGES};
use crate::xen::{DomainInfo, ForeignMemory, LogDirty, XenCtrl};
use crate::xenstore::Xenstore;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Bytes of a guest page.
pub const PAGE: usize = 4096;

/// Frames mapped per foreign-mapping call.
const MAP_BATCH: usize = 1024;

/// How long a guest may take to reach its suspend point.
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Epochs of dirty history that make up the hot set (the working set a
/// resume restores first).
const HOT_EPOCHS: usize = 8;

/// The HVM params a restore sets (as Xen 4.17's own saver sends them; only
/// non-zero values are kept): STORE_PFN, IOREQ_PFN, BUFIOREQ_PFN,
/// PAGING/MONITOR/SHARING_RING_PFN, VM86_TSS_SIZED, CONSOLE_PFN,
/// ACPI_IOPORTS_LOCATION, VIRIDIAN, IDENT_PT, VM_GENERATION_ID_ADDR,
/// IOREQ_SERVER_PFN, NR_IOREQ_SERVER_PAGES, X87_FIP_WIDTH, MCA_CAP
/// (`xen/hvm/params.h`).
const RESTORE_PARAMS: [u32; 16] = [1, 5, 6, 27, 28, 29, 37, 17, 19, 9, 12, 34, 32, 33, 36, 38];

/// Where the time of one epoch's pause went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pause {
    /// From the suspend request to the domain's suspend shutdown.
    pub suspend: Duration,
    /// Reading the dirty bitmap and copying the dirty pages.
    pub copy: Duration,
    /// Capturing the vCPU/platform context and restore state, and resuming.
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
    /// The slots of the dense image (see [`Checkpointer::image`]) that
    /// changed: the dirty frames' and the state trailer's.
    pub dirty_slots: Vec<u64>,
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
    /// The guest's populated frames, ascending: slot i of `image` is frame
    /// `layout[i]`. An HVM/PVH guest's physical map has holes (MMIO, the
    /// special pages near 4 GiB), so the image is kept dense.
    layout: Vec<u64>,
    slot: HashMap<u64, usize>,
    /// The populated frames' contents in layout order, then the state
    /// trailer ([`vmstate`]): what a restore needs besides memory.
    image: Vec<u8>,
    epoch: u64,
    /// The restore state; its per-epoch parts are refreshed at each
    /// suspend point and written into the trailer.
    state: VmState,
    /// Dirty slots of the last [`HOT_EPOCHS`] epochs, newest first.
    recent: VecDeque<Vec<u64>>,
}

impl<'a> Checkpointer<'a> {
    /// Turns on log-dirty and copies the whole memory while the guest runs
    /// (the first pre-copy round); the first epoch then makes it consistent.
    pub fn start(
        xc: &'a XenCtrl,
        fm: &'a ForeignMemory,
        xs: &'a Xenstore,
        domid: u32,
    ) -> Result<Self> {
        let info: DomainInfo = xc.domain(domid)?;
        if !info.hvm {
            bail!("domain {domid} is PV: checkpoints need a PVH or HVM guest (log-dirty on PV is not built in this Xen)");
        }
        // What a restore needs that does not change while the guest runs.
        let mut state = VmState {
            vcpus: info.vcpus,
            cpu: xc.cpu_policy(domid)?,
            config_json: vmstate::domain_config_json(domid)?,
            ..VmState::default()
        };
        for p in RESTORE_PARAMS {
            let v = xc.hvm_param(domid, p)?;
            if v != 0 {
                state.hvm_params.push((u64::from(p), v));
            }
        }
        let log_dirty = xc.log_dirty(domid)?;
        let total = log_dirty.pages();
        let mut cp = Checkpointer {
            xc,
            fm,
            xs,
            domid,
            log_dirty,
            layout: Vec::new(),
            slot: HashMap::new(),
            image: Vec::new(),
            epoch: 0,
            state,
            recent: VecDeque::new(),
        };
        cp.discover(total)?;
        cp.state.layout = cp.layout.clone();
        cp.image
            .resize(cp.image.len() + vmstate::trailer_bytes(), 0);
        Ok(cp)
    }

    /// Records the checkpoint interval in the restore state (the backup
    /// judges a silent primary by it).
    pub fn set_interval(&mut self, interval: Duration) {
        self.state.interval_ms = interval.as_millis().min(u128::from(u32::MAX)) as u32;
    }

    /// Pages of the image: the guest's frames, then the state trailer.
    pub fn pages(&self) -> usize {
        self.layout.len() + TRAILER_PAGES
    }

    /// The restore state as of the last epoch (what the trailer holds).
    pub fn restore_state(&self) -> &VmState {
        &self.state
    }

    /// Frames of guest memory held.
    pub fn guest_pages(&self) -> usize {
        self.layout.len()
    }

    /// The dense image: the populated frames' contents in frame order, then
    /// the state trailer.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// Which guest frame each slot of the image holds.
    pub fn layout(&self) -> &[u64] {
        &self.layout
    }

    /// Finds the populated frames among `0..total` (those that map) and
    /// copies them while the guest runs: the first pre-copy round.
    fn discover(&mut self, total: u64) -> Result<()> {
        let all: Vec<u64> = (0..total).collect();
        for batch in all.chunks(MAP_BATCH) {
            let m = self.fm.map(self.domid, batch)?;
            for (i, &pfn) in batch.iter().enumerate() {
                if let Some(src) = m.page(i) {
                    self.slot.insert(pfn, self.layout.len());
                    self.layout.push(pfn);
                    self.image.extend_from_slice(src);
                }
            }
        }
        if self.layout.is_empty() {
            bail!("domain {} has no mappable memory", self.domid);
        }
        Ok(())
    }

    /// Copies frames into the image. Returns their slots; frames outside the
    /// layout (populated after the start) are reported as an error, as a
    /// guest that changes its memory map cannot be checkpointed densely.
    fn copy_frames(&mut self, pfns: &[u64]) -> Result<Vec<u64>> {
        let mut slots = Vec::with_capacity(pfns.len());
        for batch in pfns.chunks(MAP_BATCH) {
            let m = self.fm.map(self.domid, batch)?;
            for (i, &pfn) in batch.iter().enumerate() {
                let slot = *self.slot.get(&pfn).with_context(|| {
                    format!("frame {pfn:#x} was not populated when protection started")
                })?;
                let src = m
                    .page(i)
                    .with_context(|| format!("frame {pfn:#x} no longer maps (ballooned out?)"))?;
                self.image[slot * PAGE..(slot + 1) * PAGE].copy_from_slice(src);
                slots.push(slot as u64);
            }
        }
        Ok(slots)
    }

    /// A live pre-copy round: copies what was dirtied since the last round
    /// while the guest runs. Returns the slots copied.
    pub fn precopy_round(&mut self) -> Result<Vec<u64>> {
        let dirty: Vec<u64> = self.log_dirty.clean()?.pfns().collect();
        self.copy_frames(&dirty)
    }

    /// Asks the guest to suspend and waits until it has.
    fn suspend(&self) -> Result<()> {
        self.xs.write(
            &format!("/local/domain/{}/control/shutdown", self.domid),
            "suspend",
        )?;
        let t0 = Instant::now();
        loop {
            if self.xc.is_suspended(self.domid)? {
                return Ok(());
            }
            if t0.elapsed() > SUSPEND_TIMEOUT {
                bail!(
                    "domain {} did not suspend within {:?}",
                    self.domid,
                    SUSPEND_TIMEOUT
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// One checkpoint: suspend, copy what changed, capture the context, resume.
    pub fn capture_epoch(&mut self) -> Result<Epoch> {
        self.capture_epoch_with(|_, _| Ok(()))
    }

    /// A checkpoint that also runs `at_suspend_point` on the fresh image
    /// (with the epoch's dirty slots) while the guest is still suspended:
    /// verification, shipping a final epoch.
    pub fn capture_epoch_with(
        &mut self,
        at_suspend_point: impl FnOnce(&mut Self, &[u64]) -> Result<()>,
    ) -> Result<Epoch> {
        let t0 = Instant::now();
        self.suspend()?;
        let t1 = Instant::now();
        let copied = self.log_dirty.clean().and_then(|bitmap| {
            let dirty: Vec<u64> = bitmap.pfns().collect();
            let slots = self.copy_frames(&dirty)?;
            Ok((dirty, slots))
        });
        let t2 = Instant::now();
        let context = self.xc.hvm_context(self.domid);
        let trailer = match (&copied, &context) {
            (Ok((_, slots)), Ok(ctx)) => self.write_trailer(slots, ctx),
            _ => Ok(Vec::new()),
        };
        let t_state = Instant::now();
        let extra = match (&copied, &trailer) {
            (Ok((_, slots)), Ok(changed)) => {
                let all: Vec<u64> = slots.iter().chain(changed).copied().collect();
                at_suspend_point(self, &all)
            }
            _ => Ok(()),
        };
        // Resume whatever happened above: a guest left suspended is down.
        let t_resume = Instant::now();
        let resumed = self
            .xc
            .resume(self.domid, true)
            .and_then(|_| self.xs.resume_domain(self.domid));
        let t3 = Instant::now();
        let (dirty, mut dirty_slots) = copied?;
        let hvm_context = context?;
        dirty_slots.extend(trailer?);
        extra?;
        resumed?;
        self.epoch += 1;
        Ok(Epoch {
            number: self.epoch,
            dirty,
            dirty_slots,
            hvm_context,
            pause: Pause {
                suspend: t1 - t0,
                copy: t2 - t1,
                resume: (t_state - t2) + (t3 - t_resume),
            },
        })
    }

    /// At a suspend point: refreshes the restore state (HVM context, TSC,
    /// hot set) and writes it into the trailer. Returns the trailer slots
    /// that changed.
    fn write_trailer(&mut self, dirty_slots: &[u64], hvm_context: &[u8]) -> Result<Vec<u64>> {
        self.state.epoch = self.epoch + 1;
        self.state.tsc = self.xc.tsc_info(self.domid)?;
        self.state.hvm_context = hvm_context.to_vec();
        self.recent.push_front(dirty_slots.to_vec());
        self.recent.truncate(HOT_EPOCHS);
        let mut seen = HashSet::new();
        self.state.hot_slots = self
            .recent
            .iter()
            .flatten()
            .filter(|&&s| seen.insert(s))
            .take(MAX_HOT)
            .map(|&s| s as u32)
            .collect();
        let bytes = self.state.encode()?;
        let first = self.layout.len();
        let mut changed = Vec::new();
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            let at = (first + i) * PAGE;
            let held = &mut self.image[at..at + PAGE];
            if held != page {
                held.copy_from_slice(page);
                changed.push((first + i) as u64);
            }
        }
        Ok(changed)
    }

    /// Takes one more checkpoint and, before resuming the guest, compares
    /// the held image with its memory page by page. Frames that backends
    /// wrote while it was suspended (grant copies of incoming packets) are
    /// marked dirty again and are the next epoch's: they are counted, not
    /// failed. Returns (pages compared, pages changed by backends).
    pub fn verify_against_guest(&mut self) -> Result<(usize, usize)> {
        let mut outcome = (0, 0);
        let epoch = self.capture_epoch_with(|cp, _| {
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
        let pfns = self.layout.clone();
        // (frame, bytes that differ)
        let mut differ: Vec<(u64, usize)> = Vec::new();
        for (b, batch) in pfns.chunks(MAP_BATCH).enumerate() {
            let m = self.fm.map(self.domid, batch)?;
            for (i, pfn) in batch.iter().enumerate() {
                let live = m
                    .page(i)
                    .with_context(|| format!("frame {pfn:#x} no longer maps"))?;
                let slot = b * MAP_BATCH + i;
                let held = &self.image[slot * PAGE..(slot + 1) * PAGE];
                if live != held {
                    let n = (0..PAGE).filter(|&o| live[o] != held[o]).count();
                    differ.push((*pfn, n));
                }
            }
        }
        if differ.is_empty() {
            return Ok((pfns.len(), 0));
        }
        let logged: std::collections::BTreeSet<u64> = self.log_dirty.peek()?.pfns().collect();
        let unlogged: Vec<(u64, usize)> = differ
            .iter()
            .copied()
            .filter(|(p, _)| !logged.contains(p))
            .collect();
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

impl Checkpointer<'_> {
    /// Compares `remote` (the backup's committed image, dense, in slot
    /// order) with the guest's memory as it is now, frame by frame: meant to
    /// run at a suspend point. Frames Xen writes behind log-dirty's back are
    /// tolerated as in `compare_all`. Returns the pages compared.
    pub fn compare_remote(&mut self, remote: &[u8]) -> Result<usize> {
        if remote.len() != self.image.len() {
            anyhow::bail!(
                "the backup's image has {} bytes, the guest {}",
                remote.len(),
                self.image.len()
            );
        }
        let trailer = self.layout.len() * PAGE;
        if remote[trailer..] != self.image[trailer..] {
            anyhow::bail!(
                "the backup's restore state differs from the one captured at this suspend point"
            );
        }
        let saved = std::mem::replace(&mut self.image, remote.to_vec());
        let r = self.compare_all();
        self.image = saved;
        let (n, _) = r?;
        Ok(n)
    }
}

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
