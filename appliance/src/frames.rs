//! A bitmap allocator of page frames (PFNs).
//!
//! One bit per page of the domain (set = in use). Allocation is lowest-first:
//! while the appliance extends its page tables at boot it must take each new
//! page-table frame from memory that is already mapped, and the mapped part
//! of memory is always a prefix of the PFN space.

/// The allocator; the bitmap storage is provided by the caller.
pub struct FrameAllocator<'a> {
    bits: &'a mut [u64],
    nr_frames: u64,
    free: u64,
    /// Every frame below this one is in use (a search hint).
    low_hint: u64,
}

impl<'a> FrameAllocator<'a> {
    /// Bitmap words needed for `nr_frames` frames.
    pub fn words_for(nr_frames: u64) -> usize {
        nr_frames.div_ceil(64) as usize
    }

    /// Creates an allocator over `nr_frames` frames where `[0, first_free)`
    /// is in use and the rest is free. `bits` must hold [`Self::words_for`] words.
    pub fn new(bits: &'a mut [u64], nr_frames: u64, first_free: u64) -> Self {
        assert!(bits.len() >= Self::words_for(nr_frames));
        assert!(first_free <= nr_frames);
        bits.fill(0);
        // frames beyond nr_frames in the last word count as used
        for f in nr_frames..(bits.len() as u64 * 64) {
            bits[(f / 64) as usize] |= 1 << (f % 64);
        }
        let mut a = FrameAllocator {
            bits,
            nr_frames,
            free: nr_frames,
            low_hint: 0,
        };
        for f in 0..first_free {
            a.mark_used(f);
        }
        a
    }

    fn is_used(&self, f: u64) -> bool {
        self.bits[(f / 64) as usize] & (1 << (f % 64)) != 0
    }

    /// Marks a free frame as used (e.g. reserved for another purpose).
    pub fn mark_used(&mut self, f: u64) {
        assert!(
            f < self.nr_frames && !self.is_used(f),
            "frame {f} already used"
        );
        self.bits[(f / 64) as usize] |= 1 << (f % 64);
        self.free -= 1;
    }

    /// Allocates the lowest free frame.
    pub fn alloc(&mut self) -> Option<u64> {
        let start = (self.low_hint / 64) as usize;
        for w in start..self.bits.len() {
            if self.bits[w] != u64::MAX {
                let f = w as u64 * 64 + (!self.bits[w]).trailing_zeros() as u64;
                self.mark_used(f);
                self.low_hint = f + 1;
                return Some(f);
            }
        }
        None
    }

    /// Allocates `n` contiguous frames (lowest run first); returns the first.
    pub fn alloc_contiguous(&mut self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        let mut run_start = self.low_hint;
        let mut f = self.low_hint;
        while f < self.nr_frames {
            if self.is_used(f) {
                run_start = f + 1;
            } else if f + 1 - run_start == n {
                for g in run_start..=f {
                    self.mark_used(g);
                }
                return Some(run_start);
            }
            f += 1;
        }
        None
    }

    /// Returns a frame to the pool.
    pub fn free(&mut self, f: u64) {
        assert!(
            f < self.nr_frames && self.is_used(f),
            "double free of frame {f}"
        );
        self.bits[(f / 64) as usize] &= !(1 << (f % 64));
        self.free += 1;
        self.low_hint = self.low_hint.min(f);
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// All frames managed (used or not).
    pub fn total_frames(&self) -> u64 {
        self.nr_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_first_and_reserved_prefix() {
        let mut bits = vec![0u64; FrameAllocator::words_for(200)];
        let mut a = FrameAllocator::new(&mut bits, 200, 70);
        assert_eq!(a.free_frames(), 130);
        assert_eq!(a.alloc(), Some(70));
        assert_eq!(a.alloc(), Some(71));
        a.free(70);
        assert_eq!(a.alloc(), Some(70));
        assert_eq!(a.free_frames(), 128);
    }

    #[test]
    fn exhaustion_and_tail_word() {
        let mut bits = vec![0u64; FrameAllocator::words_for(65)];
        let mut a = FrameAllocator::new(&mut bits, 65, 60);
        let got: Vec<u64> = core::iter::from_fn(|| a.alloc()).collect();
        assert_eq!(got, vec![60, 61, 62, 63, 64]);
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn contiguous_runs_skip_holes() {
        let mut bits = vec![0u64; 4];
        let mut a = FrameAllocator::new(&mut bits, 256, 10);
        a.mark_used(13);
        assert_eq!(a.alloc_contiguous(4), Some(14));
        assert_eq!(a.alloc_contiguous(3), Some(10));
        assert_eq!(a.alloc(), Some(18));
        assert_eq!(a.alloc_contiguous(1000), None);
        assert_eq!(a.free_frames(), 256 - 10 - 1 - 4 - 3 - 1);
    }

    #[test]
    #[should_panic]
    fn double_free_is_caught() {
        let mut bits = vec![0u64; 1];
        let mut a = FrameAllocator::new(&mut bits, 64, 0);
        let f = a.alloc().unwrap();
        a.free(f);
        a.free(f);
    }
}
