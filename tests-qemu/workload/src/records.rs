//! The workload's memory: fixed-size records under continuous mutation, with
//! invariants that show whether an image of it is whole.
//!
//! Each record holds its sequence number (the update that last wrote it), its
//! index, a payload derived from both, and a checksum. Records are not a
//! divisor of the page size, so many straddle two pages: a page restored from
//! a different epoch than its neighbour breaks a checksum. The sum of all
//! sequence numbers is kept alongside; a record restored stale but intact
//! breaks that sum.

/// Bytes of a record's fixed fields: seq, index, checksum.
const FIXED: usize = 24;

/// The smallest record: fixed fields plus one payload word.
pub const MIN_RECORD: usize = FIXED + 8;

/// Records in memory and the bookkeeping that lets them be verified.
pub struct Records {
    mem: Vec<u8>,
    record_size: usize,
    count: usize,
    /// Number of updates so far (the last sequence number used).
    pub counter: u64,
    /// Wrapping sum of every record's sequence number.
    digest: u64,
}

/// Why a verification failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Damage {
    /// A record's checksum does not match its content.
    Checksum { index: usize },
    /// A record claims another index than its place.
    Misplaced { index: usize, found: u64 },
    /// A record is newer than the counter.
    FromTheFuture { index: usize, seq: u64 },
    /// The records' sequence numbers do not add up to the kept digest.
    Digest { expected: u64, found: u64 },
}

impl core::fmt::Display for Damage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Damage::Checksum { index } => write!(f, "record {index}: bad checksum"),
            Damage::Misplaced { index, found } => write!(f, "record {index}: holds index {found}"),
            Damage::FromTheFuture { index, seq } => {
                write!(f, "record {index}: seq {seq} beyond counter")
            }
            Damage::Digest { expected, found } => {
                write!(f, "digest {found:#x}, expected {expected:#x}")
            }
        }
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn checksum(words: &[u8]) -> u64 {
    words.chunks(8).fold(0x9e37_79b9_7f4a_7c15, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        mix(h ^ u64::from_le_bytes(w))
    })
}

impl Records {
    /// Fills `bytes` of memory with records of `record_size` bytes, all at seq 0.
    pub fn new(bytes: usize, record_size: usize) -> Records {
        assert!(
            record_size >= MIN_RECORD && record_size.is_multiple_of(8),
            "record size must be a multiple of 8, >= {MIN_RECORD}"
        );
        let count = bytes / record_size;
        let mut r = Records {
            mem: vec![0; count * record_size],
            record_size,
            count,
            counter: 0,
            digest: 0,
        };
        for i in 0..count {
            r.write(i, 0);
        }
        r
    }

    /// Number of records.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.count
    }

    fn write(&mut self, index: usize, seq: u64) {
        let rs = self.record_size;
        let rec = &mut self.mem[index * rs..(index + 1) * rs];
        rec[0..8].copy_from_slice(&seq.to_le_bytes());
        rec[8..16].copy_from_slice(&(index as u64).to_le_bytes());
        // Payload: a quarter of it changes with each write, the rest is a
        // stable per-record pattern (real memory is rarely all new).
        let payload = &mut rec[16..rs - 8];
        let fresh = (payload.len() / 4).max(8) / 8;
        for (w, chunk) in payload.chunks_mut(8).enumerate() {
            let v = if w < fresh {
                mix(seq ^ ((w as u64) << 48) ^ index as u64)
            } else {
                mix(index as u64 * 31 + w as u64)
            };
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        let sum = checksum(&rec[..rs - 8]);
        rec[rs - 8..].copy_from_slice(&sum.to_le_bytes());
    }

    fn seq_of(&self, index: usize) -> u64 {
        let at = index * self.record_size;
        u64::from_le_bytes(self.mem[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Performs one update: the next sequence number rewrites a record chosen
    /// pseudo-randomly from it.
    pub fn update(&mut self) {
        self.counter += 1;
        let index = (mix(self.counter) % self.count as u64) as usize;
        let old = self.seq_of(index);
        self.write(index, self.counter);
        self.digest = self.digest.wrapping_sub(old).wrapping_add(self.counter);
    }

    /// Checks every invariant; returns the number of records checked.
    pub fn verify(&self) -> Result<usize, Damage> {
        let rs = self.record_size;
        let mut sum = 0u64;
        for index in 0..self.count {
            let rec = &self.mem[index * rs..(index + 1) * rs];
            let stored = u64::from_le_bytes(rec[rs - 8..].try_into().expect("8 bytes"));
            if checksum(&rec[..rs - 8]) != stored {
                return Err(Damage::Checksum { index });
            }
            let found = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
            if found != index as u64 {
                return Err(Damage::Misplaced { index, found });
            }
            let seq = self.seq_of(index);
            if seq > self.counter {
                return Err(Damage::FromTheFuture { index, seq });
            }
            sum = sum.wrapping_add(seq);
        }
        if sum != self.digest {
            return Err(Damage::Digest {
                expected: self.digest,
                found: sum,
            });
        }
        Ok(self.count)
    }

    /// Mutable access to the raw memory (tests simulate damage through it).
    #[cfg(test)]
    fn raw(&mut self) -> &mut [u8] {
        &mut self.mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_invariants() {
        let mut r = Records::new(1 << 20, 1000);
        for _ in 0..50_000 {
            r.update();
        }
        assert_eq!(r.verify(), Ok(r.len()));
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let mut r = Records::new(1 << 16, 1000);
        r.update();
        r.raw()[5000] ^= 1;
        assert_eq!(r.verify(), Err(Damage::Checksum { index: 5 }));
    }

    #[test]
    fn a_stale_page_is_caught() {
        // Keep a copy of memory, mutate more, then put one old page back:
        // what a restore that mixes epochs would produce.
        let mut r = Records::new(1 << 18, 1000);
        for _ in 0..1000 {
            r.update();
        }
        let old = r.raw().to_vec();
        for _ in 0..5000 {
            r.update();
        }
        let page = 4096 * 10..4096 * 11;
        assert_ne!(&old[page.clone()], &r.raw()[page.clone()]);
        r.raw()[page.clone()].copy_from_slice(&old[page]);
        assert!(r.verify().is_err());
    }

    #[test]
    fn a_record_from_an_older_epoch_breaks_the_digest() {
        let mut r = Records::new(1 << 16, 1000);
        for _ in 0..10 {
            r.update();
        }
        // Find a record written by the last update and put back its seq-0 form.
        let idx = (0..r.len()).find(|&i| r.seq_of(i) == 10).unwrap();
        let stale = Records::new(1 << 16, 1000);
        let rs = 1000;
        let src = stale.mem[idx * rs..(idx + 1) * rs].to_vec();
        r.raw()[idx * rs..(idx + 1) * rs].copy_from_slice(&src);
        assert!(matches!(r.verify(), Err(Damage::Digest { .. })));
    }
}
