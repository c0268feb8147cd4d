//! FGBI — fine-grained block incremental codec for Resilire epochs.
//!
//! An epoch travels as a sequence of *chunks* (the opaque payload of EPOCH-data frames). A chunk
//! is a sequence of whole, self-delimiting records, at most [`MAX_CHUNK_LEN`] bytes; each record
//! rewrites one 4 KiB page of the protected VM's image. The record format is documented in
//! `FORMAT.md` beside this crate.
//!
//! * The [`Decoder`] (always available, `no_std` + `alloc`) applies chunks to any
//!   [`PageTarget`] — typically the staging area of the checkpoint store. It never panics on
//!   input: every length is checked and every failure is a [`DecodeError`].
//! * The [`Encoder`] (feature `std`, on by default) runs on the primary. It keeps a shadow copy of
//!   the content last sent and a bounded content index, and chooses per page, by measured size,
//!   between a block delta (skips, zero blocks, XOR with zero-run coding, references to content
//!   the backup already has), zstd of that delta, and the raw page.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

#[cfg(feature = "std")]
mod encoder;
#[cfg(feature = "std")]
pub use encoder::{
    batch_compressor, EncodeStats, Encoder, EncoderConfig, MemoryOverhead, StreamTap,
};

/// Version of the record format (`FORMAT.md`) the encoder writes; the decoder also reads every
/// earlier version (version 2 only added [`tag::ZSPLIT`]).
pub const FORMAT_VERSION: u16 = 2;

/// Size of a guest page; the unit of dirty tracking and of records.
pub const PAGE_SIZE: usize = 4096;
/// Largest chunk the decoder accepts (and the encoder produces by default).
pub const MAX_CHUNK_LEN: usize = 1 << 20;
/// Smallest supported block size.
pub const MIN_BLOCK_SIZE: usize = 32;
/// Largest supported block size (one block per page).
pub const MAX_BLOCK_SIZE: usize = PAGE_SIZE;
/// Default block size.
pub const DEFAULT_BLOCK_SIZE: usize = 64;
/// Largest (decompressed) op stream of one page record the decoder accepts.
pub const MAX_OPS_LEN: usize = 2 * PAGE_SIZE;
/// Largest decompressed payload of a [`tag::ZBATCH`] record.
pub const MAX_BATCH_LEN: usize = 256 * 1024;
/// Largest record the encoder ever writes outside a batch (a raw page: tag, 10-byte pfn varint, page).
pub const MAX_RECORD_LEN: usize = 1 + 10 + PAGE_SIZE;

/// Record tags (first byte of every record).
pub mod tag {
    /// The page becomes all zeros. No payload.
    pub const ZERO_PAGE: u8 = 0x01;
    /// The page is given whole: 4096 bytes follow.
    pub const RAW_PAGE: u8 = 0x02;
    /// The page is rewritten by an op stream: `varint len`, then `len` bytes of ops.
    pub const OPS: u8 = 0x03;
    /// Like [`OPS`], but the op stream is zstd-compressed: `varint raw_len`, `varint clen`,
    /// then a zstd frame of `clen` bytes *without* its 4-byte magic number.
    pub const ZOPS: u8 = 0x04;
    /// A batch of records compressed together: `varint raw_len` (at most
    /// [`crate::MAX_BATCH_LEN`]), `varint clen`, then a zstd frame without its magic number that
    /// decompresses to `raw_len` bytes of whole records (no nested batches). This record has no
    /// pfn field; its inner records continue the chunk's running page number.
    pub const ZBATCH: u8 = 0x05;
    /// A batch like [`ZBATCH`], its records split into two separately compressed streams
    /// (format version 2): the *control* stream (tags, varints, op bytes) and the *literal*
    /// stream (raw page bytes, LIT payloads, the literal bytes of zero-run deltas). Body:
    /// `varint raw_len` (at most [`crate::MAX_BATCH_LEN`]), `varint ctl_len` (at most `raw_len`),
    /// `varint ctl_clen`, the control stream's zstd frame, `varint lit_clen`, the literal
    /// stream's zstd frame (frames without magic number; an empty stream has `clen` 0 and no
    /// frame). The records are the two streams merged back ([`crate::split`]).
    pub const ZSPLIT: u8 = 0x06;
}

/// Op kinds of a page's op stream (high 3 bits of an op byte).
pub mod op {
    /// Blocks unchanged.
    pub const SKIP: u8 = 0;
    /// Blocks become zero.
    pub const ZERO: u8 = 1;
    /// Blocks given literally (`n * block_size` bytes follow).
    pub const LIT: u8 = 2;
    /// Blocks XORed with a zero-run coded delta (see [`crate::zrle`]).
    pub const XOR: u8 = 3;
    /// Blocks copied from consecutive blocks of the image (`varint zigzag delta` follows).
    pub const REF: u8 = 4;
    /// Blocks patched with a zero-run coded delta whose literal bytes are the *new* bytes
    /// (same runs as [`XOR`]: the runs where the XOR with the old content is non-zero).
    pub const PATCH: u8 = 5;
}

/// Checks that `block_size` is a power of two in `MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE`.
pub fn check_block_size(block_size: usize) -> Result<(), BlockSizeError> {
    if block_size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        Ok(())
    } else {
        Err(BlockSizeError(block_size))
    }
}

/// A block size outside the supported set (powers of two, 32 to 4096).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizeError(pub usize);

impl fmt::Display for BlockSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unsupported block size {} (power of two in 32..=4096)",
            self.0
        )
    }
}

/// LEB128 unsigned varints.
pub mod varint {
    use alloc::vec::Vec;

    /// Appends `v` as a LEB128 varint.
    pub fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Number of bytes [`put`] writes for `v`.
    pub fn len(v: u64) -> usize {
        let bits = 64 - (v | 1).leading_zeros() as usize;
        bits.div_ceil(7)
    }

    /// Zigzag-maps a signed value to unsigned.
    pub fn zigzag(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    /// Inverse of [`zigzag`].
    pub fn unzigzag(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }
}

/// A bounds-checked reader over input bytes; every failure is [`Malformed`].
#[derive(Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
}

/// Input bytes that do not form a valid encoding (truncated, overlong, out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl<'a> Cursor<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }
    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Reads one byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.buf.split_first().ok_or(Malformed)?;
        self.buf = rest;
        Ok(b)
    }
    /// Reads a LEB128 varint of at most 10 bytes that fits in a u64.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, Malformed> {
        // Fast path: one-byte varints (most lengths, runs and page deltas).
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok(u64::from(b));
            }
        }
        self.varint_long()
    }

    fn varint_long(&mut self) -> Result<u64, Malformed> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(Malformed);
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed)
    }
    /// Reads a varint that must be at most `max`, as usize.
    #[inline]
    pub fn varint_max(&mut self, max: usize) -> Result<usize, Malformed> {
        let v = self.varint()?;
        if v > max as u64 {
            return Err(Malformed);
        }
        Ok(v as usize)
    }
    /// Takes the next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
}

/// Zero-run coding of XOR deltas (XBZRLE-like), shared by FGBI and the bench's baseline.
///
/// A delta covering `len` bytes is a sequence of pairs `varint zero_run, varint lit_len,
/// lit_len bytes` whose runs add up to exactly `len`; a pair with both runs zero is invalid.
/// Literal bytes are XORed into the target, zero runs leave it unchanged.
pub mod zrle {
    use super::{varint, Cursor, Malformed};
    use alloc::vec::Vec;

    #[inline]
    fn equal_prefix(a: &[u8], b: &[u8]) -> usize {
        let mut i = 0;
        let n = a.len().min(b.len());
        while i + 8 <= n {
            let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]))
                ^ u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
            if x != 0 {
                return i + (x.trailing_zeros() / 8) as usize;
            }
            i += 8;
        }
        while i < n && a[i] == b[i] {
            i += 1;
        }
        i
    }

    /// Length of the prefix where `a` and `b` differ in every byte, 8 bytes at a time.
    #[inline]
    fn differing_prefix(a: &[u8], b: &[u8]) -> usize {
        const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let mut i = 0;
        let n = a.len().min(b.len());
        while i + 8 <= n {
            let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]))
                ^ u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
            // 0x80 in every byte of x that is zero (an equal byte).
            let z = !(((x & LO7).wrapping_add(LO7)) | x | LO7);
            if z != 0 {
                return i + (z.trailing_zeros() / 8) as usize;
            }
            i += 8;
        }
        while i < n && a[i] != b[i] {
            i += 1;
        }
        i
    }

    /// Appends the zero-run coded XOR of `old` and `new` (equal lengths) to `out`.
    pub fn encode_xor(old: &[u8], new: &[u8], out: &mut Vec<u8>) {
        encode(old, new, out, true)
    }

    /// Like [`encode_xor`], but literal bytes are the new bytes (a patch, as QEMU's XBZRLE).
    pub fn encode_patch(old: &[u8], new: &[u8], out: &mut Vec<u8>) {
        encode(old, new, out, false)
    }

    fn encode(old: &[u8], new: &[u8], out: &mut Vec<u8>, xor: bool) {
        let n = old.len().min(new.len());
        encode_bytes(&old[..n], &new[..n], out, xor)
    }

    #[inline]
    fn put_pair(
        out: &mut Vec<u8>,
        old: &[u8],
        new: &[u8],
        zs: usize,
        ls: usize,
        i: usize,
        xor: bool,
    ) {
        varint::put(out, (ls - zs) as u64);
        varint::put(out, (i - ls) as u64);
        if xor {
            out.extend(old[ls..i].iter().zip(&new[ls..i]).map(|(a, b)| a ^ b));
        } else {
            out.extend_from_slice(&new[ls..i]);
        }
    }

    /// Zero runs are found 8 bytes at a time, literal runs byte by byte (measured faster than
    /// a bitmap of equal bytes on real memory, where literal runs are short).
    fn encode_bytes(old: &[u8], new: &[u8], out: &mut Vec<u8>, xor: bool) {
        let n = old.len();
        let mut i = 0;
        while i < n {
            let zs = i;
            i += equal_prefix(&old[i..n], &new[i..n]);
            let ls = i;
            while i < n {
                i += differing_prefix(&old[i..n], &new[i..n]);
                if i >= n {
                    break;
                }
                let g = equal_prefix(&old[i..n], &new[i..n]);
                if g >= 3 || i + g == n {
                    break;
                }
                i += g;
            }
            put_pair(out, old, new, zs, ls, i, xor);
            if ls == i {
                break;
            }
        }
    }

    /// Sets bit `i % 64` of `mask[i / 64]` when `a[i] != b[i]`, clears it otherwise, for every
    /// `i` below the common length of `a` and `b` (a multiple of 8, at most `64 * mask.len()`).
    /// Eight bytes at a time: a SWAR test of each byte of the XOR, gathered by one multiply.
    pub fn diff_mask(a: &[u8], b: &[u8], mask: &mut [u64]) {
        let n = a.len().min(b.len()).min(mask.len() * 64);
        let (a, b) = (&a[..n], &b[..n]);
        let mut ac = a.chunks_exact(64);
        let mut bc = b.chunks_exact(64);
        let mut w = 0;
        for (x, y) in (&mut ac).zip(&mut bc) {
            // Fast path for equal 64-byte stretches: one wide compare.
            let x: &[u8; 64] = x.try_into().unwrap_or(&[0; 64]);
            let y: &[u8; 64] = y.try_into().unwrap_or(&[0; 64]);
            mask[w] = if eq64(x, y) { 0 } else { word_mask(x, y) };
            w += 1;
        }
        let (x, y) = (ac.remainder(), bc.remainder());
        if !x.is_empty() {
            let mut bits = 0u64;
            for (k, (x, y)) in x.chunks_exact(8).zip(y.chunks_exact(8)).enumerate() {
                bits |= byte_mask8(x, y) << (8 * k);
            }
            mask[w] = bits;
        }
    }

    /// Whether two 64-byte stretches are equal (four 16-byte compares, no call).
    #[inline]
    fn eq64(x: &[u8; 64], y: &[u8; 64]) -> bool {
        let mut acc = 0u128;
        for k in 0..4 {
            acc |= u128::from_ne_bytes(x[16 * k..16 * k + 16].try_into().unwrap_or([0; 16]))
                ^ u128::from_ne_bytes(y[16 * k..16 * k + 16].try_into().unwrap_or([0; 16]));
        }
        acc == 0
    }

    /// Mask of the differing bytes of two 8-byte slices (bit k: byte k differs).
    #[inline]
    fn byte_mask8(x: &[u8], y: &[u8]) -> u64 {
        const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        const ONES: u64 = 0x0101_0101_0101_0101;
        const GATHER: u64 = 0x0102_0408_1020_4080;
        let x = u64::from_le_bytes(x.try_into().unwrap_or([0; 8]))
            ^ u64::from_le_bytes(y.try_into().unwrap_or([0; 8]));
        // 0x01 in every byte of x that is not zero, gathered into the top byte by one multiply.
        let t = ((((x & LO7).wrapping_add(LO7)) | x) >> 7) & ONES;
        t.wrapping_mul(GATHER) >> 56
    }

    #[inline]
    fn word_mask(x: &[u8; 64], y: &[u8; 64]) -> u64 {
        let mut bits = 0u64;
        for k in 0..8 {
            bits |= byte_mask8(&x[8 * k..8 * k + 8], &y[8 * k..8 * k + 8]) << (8 * k);
        }
        bits
    }

    /// First position in `from..end` whose bit is set in `m`, or `end`.
    #[inline]
    fn next_one(m: &[u64], from: usize, end: usize) -> usize {
        let mut w = from / 64;
        let mut bits = m.get(w).copied().unwrap_or(0) & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return (w * 64 + bits.trailing_zeros() as usize).min(end);
            }
            w += 1;
            if w * 64 >= end {
                return end;
            }
            bits = m.get(w).copied().unwrap_or(0);
        }
    }

    /// Bits of word `w` of the "equal byte" mask, with positions at or beyond `end` counted equal.
    #[inline]
    fn eq_word(m: &[u64], w: usize, end: usize) -> u64 {
        let s = w * 64;
        if s >= end {
            return !0;
        }
        let e = !m.get(w).copied().unwrap_or(0);
        if end - s >= 64 {
            e
        } else {
            e | (!0u64 << (end - s))
        }
    }

    /// First position `p` in `from..end` where bytes `p`, `p+1`, `p+2` are all equal (bytes at
    /// or beyond `end` count as equal), or `end`.
    #[inline]
    fn next_stop(m: &[u64], from: usize, end: usize) -> usize {
        if from >= end {
            return end;
        }
        let mut w = from / 64;
        let mut e = eq_word(m, w, end);
        let mut lo = !0u64 << (from % 64);
        loop {
            let nx = eq_word(m, w + 1, end);
            let stop = e & ((e >> 1) | (nx << 63)) & ((e >> 2) | (nx << 62)) & lo;
            if stop != 0 {
                return (w * 64 + stop.trailing_zeros() as usize).min(end);
            }
            w += 1;
            if w * 64 >= end {
                return end;
            }
            e = nx;
            lo = !0;
        }
    }

    /// The delta of bytes `s..e` of `old` → `new` (XOR values if `xor`, else the new bytes), the
    /// same bytes as [`encode_xor`] / [`encode_patch`] of `old[s..e]`, `new[s..e]`, from the
    /// byte mask `m` of [`diff_mask`] over the whole of `old` and `new` (the run boundaries are
    /// found with bit scans instead of byte compares).
    pub fn encode_masked(
        old: &[u8],
        new: &[u8],
        m: &[u64],
        s: usize,
        e: usize,
        out: &mut Vec<u8>,
        xor: bool,
    ) {
        let mut spans = Vec::new();
        encode_masked_spans(old, new, m, s, e, out, xor, &mut spans);
    }

    /// [`encode_masked`], also appending to `spans` the position in `out` and the length of
    /// each non-empty run of literal bytes it writes.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_masked_spans(
        old: &[u8],
        new: &[u8],
        m: &[u64],
        s: usize,
        e: usize,
        out: &mut Vec<u8>,
        xor: bool,
        spans: &mut Vec<(u32, u32)>,
    ) {
        let mut i = s;
        while i < e {
            let zs = i;
            let ls = next_one(m, i, e);
            if ls >= e {
                put_pair(out, old, new, zs, e, e, xor);
                break;
            }
            let le = next_stop(m, ls + 1, e);
            varint::put(out, (ls - zs) as u64);
            varint::put(out, (le - ls) as u64);
            spans.push((out.len() as u32, (le - ls) as u32));
            if xor {
                out.extend(old[ls..le].iter().zip(&new[ls..le]).map(|(a, b)| a ^ b));
            } else {
                out.extend_from_slice(&new[ls..le]);
            }
            i = le;
        }
    }

    /// Reads a delta covering `target.len()` bytes from `cur` and XORs it into `target`.
    pub fn apply_xor(cur: &mut Cursor<'_>, target: &mut [u8]) -> Result<(), Malformed> {
        apply(cur, target, true)
    }

    /// Reads a patch covering `target.len()` bytes from `cur` and writes its literals.
    pub fn apply_patch(cur: &mut Cursor<'_>, target: &mut [u8]) -> Result<(), Malformed> {
        apply(cur, target, false)
    }

    fn apply(cur: &mut Cursor<'_>, target: &mut [u8], xor: bool) -> Result<(), Malformed> {
        let mut pos = 0usize;
        while pos < target.len() {
            let left = target.len() - pos;
            let z = cur.varint_max(left)?;
            let l = cur.varint_max(left - z)?;
            if z == 0 && l == 0 {
                return Err(Malformed);
            }
            pos += z;
            let lit = cur.take(l)?;
            let dst = target.get_mut(pos..pos + l).ok_or(Malformed)?;
            if xor {
                for (d, s) in dst.iter_mut().zip(lit) {
                    *d ^= *s;
                }
            } else {
                dst.copy_from_slice(lit);
            }
            pos += l;
        }
        Ok(())
    }
}

/// Splitting a sequence of records into a control and a literal stream, and merging them back
/// (the body of [`tag::ZSPLIT`]).
///
/// The control stream holds every byte of the records except *literal bytes*: the 4096 bytes of
/// a RAW_PAGE, the payload of a LIT op and the literal bytes of each pair of a PATCH/XOR zero-run
/// delta. Those go, in order, to the literal stream. Only ZERO_PAGE, RAW_PAGE and OPS records
/// may be split; the op streams are walked with the block size agreed in HELLO.
pub mod split {
    use super::{op, tag, Cursor, Malformed, PAGE_SIZE};
    use alloc::vec::Vec;

    /// One side of the walk. Control bytes are parsed from [`Walk::ctl`] and copied in bulk,
    /// between literal runs, by [`Walk::lit`] and [`Walk::finish`].
    trait Walk<'a> {
        /// The cursor over control bytes.
        fn ctl(&mut self) -> &mut Cursor<'a>;
        /// Copies the control bytes parsed since the last literal run, then `n` literal bytes.
        fn lit(&mut self, n: usize) -> Result<(), Malformed>;
        /// Position in the merged record stream.
        fn pos(&self) -> usize;
        /// Copies the control bytes parsed since the last literal run.
        fn finish(&mut self) -> Result<(), Malformed>;
    }

    #[inline]
    fn varint_max(c: &mut Cursor<'_>, max: usize) -> Result<usize, Malformed> {
        c.varint_max(max)
    }

    /// Walks whole records (see the module documentation).
    fn walk<'a, W: Walk<'a>>(w: &mut W, bs: usize) -> Result<(), Malformed> {
        let bpp = PAGE_SIZE / bs;
        while !w.ctl().is_empty() {
            let c = w.ctl();
            let t = c.u8()?;
            c.varint()?;
            match t {
                tag::ZERO_PAGE => {}
                tag::RAW_PAGE => w.lit(PAGE_SIZE)?,
                tag::OPS => {
                    let len = varint_max(w.ctl(), crate::MAX_OPS_LEN)?;
                    let end = w.pos() + len;
                    let mut blk = 0usize;
                    while w.pos() < end {
                        let c = w.ctl();
                        let b = c.u8()?;
                        let mut n = usize::from(b & 31) + 1;
                        if n == 32 {
                            n += varint_max(c, bpp)?;
                        }
                        if n > bpp - blk {
                            return Err(Malformed);
                        }
                        blk += n;
                        match b >> 5 {
                            op::SKIP | op::ZERO => {}
                            op::LIT => w.lit(n * bs)?,
                            op::REF => {
                                c.varint()?;
                            }
                            op::XOR | op::PATCH => {
                                let mut left = n * bs;
                                while left > 0 {
                                    let c = w.ctl();
                                    let z = varint_max(c, left)?;
                                    let l = varint_max(c, left - z)?;
                                    if z == 0 && l == 0 {
                                        return Err(Malformed);
                                    }
                                    if l > 0 {
                                        w.lit(l)?;
                                    }
                                    left -= z + l;
                                }
                            }
                            _ => return Err(Malformed),
                        }
                    }
                    if w.pos() != end {
                        return Err(Malformed);
                    }
                }
                _ => return Err(Malformed),
            }
        }
        w.finish()
    }

    /// Splits: the control cursor runs over the merged records themselves.
    struct Splitter<'a, 'o> {
        src: Cursor<'a>,
        all: &'a [u8],
        /// Start (in `all`) of the control bytes not yet copied.
        mark: usize,
        ctl: &'o mut Vec<u8>,
        lit: &'o mut Vec<u8>,
    }

    impl<'a> Walk<'a> for Splitter<'a, '_> {
        #[inline]
        fn ctl(&mut self) -> &mut Cursor<'a> {
            &mut self.src
        }
        fn lit(&mut self, n: usize) -> Result<(), Malformed> {
            let at = self.pos();
            let l = self.src.take(n)?;
            self.ctl
                .extend_from_slice(self.all.get(self.mark..at).ok_or(Malformed)?);
            self.lit.extend_from_slice(l);
            self.mark = at + n;
            Ok(())
        }
        #[inline]
        fn pos(&self) -> usize {
            self.all.len() - self.src.remaining()
        }
        fn finish(&mut self) -> Result<(), Malformed> {
            let at = self.pos();
            self.ctl
                .extend_from_slice(self.all.get(self.mark..at).ok_or(Malformed)?);
            self.mark = at;
            Ok(())
        }
    }

    /// Merges: control bytes are parsed from the control stream and copied to `out` in bulk.
    struct Merger<'a, 'o> {
        ctl: Cursor<'a>,
        ctl_all: &'a [u8],
        /// Start (in `ctl_all`) of the control bytes not yet copied.
        mark: usize,
        lit: Cursor<'a>,
        out: &'o mut Vec<u8>,
        max: usize,
    }

    impl Merger<'_, '_> {
        /// Copies the parsed control bytes and `lit` bytes of literals, within `max`.
        fn copy(&mut self, n: usize) -> Result<(), Malformed> {
            let at = self.ctl_all.len() - self.ctl.remaining();
            let c = self.ctl_all.get(self.mark..at).ok_or(Malformed)?;
            if c.len() + n > self.max - self.out.len() {
                return Err(Malformed);
            }
            let l = self.lit.take(n)?;
            self.out.extend_from_slice(c);
            self.out.extend_from_slice(l);
            self.mark = at;
            Ok(())
        }
    }

    impl<'a> Walk<'a> for Merger<'a, '_> {
        #[inline]
        fn ctl(&mut self) -> &mut Cursor<'a> {
            &mut self.ctl
        }
        fn lit(&mut self, n: usize) -> Result<(), Malformed> {
            self.copy(n)
        }
        #[inline]
        fn pos(&self) -> usize {
            // Copied bytes plus the control bytes parsed since.
            self.out.len() + (self.ctl_all.len() - self.ctl.remaining()) - self.mark
        }
        fn finish(&mut self) -> Result<(), Malformed> {
            self.copy(0)
        }
    }

    /// Appends the control bytes of `records` to `ctl` and its literal bytes to `lit`. Fails
    /// (with partial output) if `records` holds anything but whole ZERO_PAGE, RAW_PAGE and OPS
    /// records for block size `bs`.
    pub fn split(
        records: &[u8],
        bs: usize,
        ctl: &mut Vec<u8>,
        lit: &mut Vec<u8>,
    ) -> Result<(), Malformed> {
        crate::check_block_size(bs).map_err(|_| Malformed)?;
        walk(
            &mut Splitter {
                src: Cursor::new(records),
                all: records,
                mark: 0,
                ctl,
                lit,
            },
            bs,
        )
    }

    /// Merges a control and a literal stream back into records, appended to `out` (which must
    /// not grow beyond `max` bytes). Both streams must be consumed exactly.
    pub fn merge(
        ctl: &[u8],
        lit: &[u8],
        bs: usize,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), Malformed> {
        crate::check_block_size(bs).map_err(|_| Malformed)?;
        let max = max.max(out.len());
        let mut m = Merger {
            ctl: Cursor::new(ctl),
            ctl_all: ctl,
            mark: 0,
            lit: Cursor::new(lit),
            out,
            max,
        };
        walk(&mut m, bs)?;
        if m.lit.is_empty() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

/// Where decoded pages go: the staged image of one VM.
///
/// The decoder reads the staged image as it is *before* the record being applied (references and
/// deltas are relative to it) and writes whole pages. It guarantees `pfn < page_count()` and
/// `offset + out.len() <= PAGE_SIZE` on every call.
pub trait PageTarget {
    /// Error of the target (for example "out of memory"); aborts the chunk.
    type Error;
    /// Number of pages of the image.
    fn page_count(&self) -> u64;
    /// Reads `out.len()` bytes of page `pfn` at `offset`.
    fn read_bytes(&mut self, pfn: u64, offset: usize, out: &mut [u8]) -> Result<(), Self::Error>;
    /// Replaces page `pfn`.
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), Self::Error>;
    /// Replaces page `pfn` by zeros.
    fn write_zero_page(&mut self, pfn: u64) -> Result<(), Self::Error> {
        self.write_page(pfn, &[0u8; PAGE_SIZE])
    }
}

/// Why a chunk could not be applied. The chunk's effect on the target is then partial: the
/// caller must discard the staging (the store's `abort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError<E> {
    /// The chunk is longer than [`MAX_CHUNK_LEN`].
    ChunkTooLong(usize),
    /// Truncated or invalid bytes at this offset of the chunk (record start).
    Malformed {
        /// Offset of the record that failed.
        offset: usize,
    },
    /// Unknown record tag.
    UnknownTag {
        /// Offset of the record.
        offset: usize,
        /// The tag byte.
        tag: u8,
    },
    /// A record names a page beyond the image.
    PfnOutOfRange {
        /// The page number.
        pfn: u64,
    },
    /// A reference points beyond the image.
    RefOutOfRange {
        /// Page of the record.
        pfn: u64,
    },
    /// A compressed op stream failed to decompress or had the wrong size.
    Zstd {
        /// Page of the record.
        pfn: u64,
    },
    /// The target refused (for example out of memory).
    Target(E),
    /// The decoder's own scratch buffers could not grow (the heap is exhausted).
    OutOfMemory,
}

impl<E: fmt::Debug> fmt::Display for DecodeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::ChunkTooLong(n) => write!(f, "chunk of {n} bytes exceeds the limit"),
            DecodeError::Malformed { offset } => write!(f, "malformed record at offset {offset}"),
            DecodeError::UnknownTag { offset, tag } => {
                write!(f, "unknown record tag {tag:#x} at offset {offset}")
            }
            DecodeError::PfnOutOfRange { pfn } => write!(f, "page {pfn} beyond the image"),
            DecodeError::RefOutOfRange { pfn } => {
                write!(f, "reference beyond the image in page {pfn}")
            }
            DecodeError::Zstd { pfn } => write!(f, "bad compressed op stream in page {pfn}"),
            DecodeError::Target(e) => write!(f, "target refused: {e:?}"),
            DecodeError::OutOfMemory => write!(f, "decoder scratch memory exhausted"),
        }
    }
}

/// What one chunk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Records applied.
    pub records: u64,
}

/// The zstd frame magic number, stripped by the encoder from ZOPS payloads.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Backup-side decoder of one VM's epochs. Holds scratch buffers only (a page, 8 KiB of op
/// stream and two batch-sized buffers of 256 KiB, plus the zstd decoder's state); all image state lives in the [`PageTarget`].
pub struct Decoder {
    block_size: usize,
    page: Box<[u8; PAGE_SIZE]>,
    ops: Vec<u8>,
    zframe: Vec<u8>,
    batch: Vec<u8>,
    /// The two streams of a [`tag::ZSPLIT`] batch, decompressed (control, then literal).
    streams: Vec<u8>,
    zdec: ruzstd::decoding::FrameDecoder,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("block_size", &self.block_size)
            .finish()
    }
}

impl Decoder {
    /// A decoder for images encoded with `block_size` (agreed in HELLO).
    pub fn new(block_size: usize) -> Result<Self, BlockSizeError> {
        check_block_size(block_size)?;
        Ok(Decoder {
            block_size,
            page: Box::new([0u8; PAGE_SIZE]),
            ops: vec![0u8; MAX_OPS_LEN],
            zframe: Vec::new(),
            batch: Vec::new(),
            streams: Vec::new(),
            zdec: ruzstd::decoding::FrameDecoder::new(),
        })
    }

    /// The block size.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Applies one chunk to `target`, record by record. On error the target holds a partial
    /// epoch, which the caller must discard.
    pub fn apply_chunk<T: PageTarget>(
        &mut self,
        target: &mut T,
        chunk: &[u8],
    ) -> Result<ChunkStats, DecodeError<T::Error>> {
        if chunk.len() > MAX_CHUNK_LEN {
            return Err(DecodeError::ChunkTooLong(chunk.len()));
        }
        let mut next_pfn: u64 = 0;
        let mut stats = ChunkStats::default();
        self.apply_records(target, chunk, 0, &mut next_pfn, &mut stats, true)?;
        Ok(stats)
    }

    fn apply_records<T: PageTarget>(
        &mut self,
        target: &mut T,
        bytes: &[u8],
        base_offset: usize,
        next_pfn: &mut u64,
        stats: &mut ChunkStats,
        outer: bool,
    ) -> Result<(), DecodeError<T::Error>> {
        let mut src = OneSrc::new(bytes);
        while !src.cur.is_empty() {
            let offset = base_offset + src.used();
            let bad = |_| DecodeError::Malformed { offset };
            let cur = &mut src.cur;
            let t = cur.u8().map_err(bad)?;
            if t == tag::ZSPLIT {
                if !outer {
                    return Err(DecodeError::Malformed { offset });
                }
                let raw_len = cur.varint_max(MAX_BATCH_LEN).map_err(bad)?;
                let ctl_len = cur.varint_max(raw_len).map_err(bad)?;
                let ctl_clen = cur.varint_max(MAX_CHUNK_LEN).map_err(bad)?;
                let ctl_frame = cur.take(ctl_clen).map_err(bad)?;
                let lit_clen = cur.varint_max(MAX_CHUNK_LEN).map_err(bad)?;
                let lit_frame = cur.take(lit_clen).map_err(bad)?;
                if !room(&mut self.zframe, ctl_clen.max(lit_clen) + ZSTD_MAGIC.len())
                    || !room(&mut self.streams, raw_len)
                {
                    return Err(DecodeError::OutOfMemory);
                }
                let mut streams = core::mem::take(&mut self.streams);
                streams.resize(raw_len, 0);
                let r = match self.inflate_streams(ctl_frame, lit_frame, ctl_len, &mut streams) {
                    Ok(()) => {
                        let (c, l) = streams.split_at(ctl_len.min(raw_len));
                        let mut two = TwoSrc {
                            ctl: Cursor::new(c),
                            lit: Cursor::new(l),
                            len: raw_len,
                        };
                        self.apply_split(target, &mut two, offset, next_pfn, stats)
                    }
                    Err(_) => Err(DecodeError::Malformed { offset }),
                };
                self.streams = streams;
                r?;
                continue;
            }
            if t == tag::ZBATCH {
                if !outer {
                    return Err(DecodeError::Malformed { offset });
                }
                let raw_len = cur.varint_max(MAX_BATCH_LEN).map_err(bad)?;
                let clen = cur.varint_max(MAX_CHUNK_LEN).map_err(bad)?;
                let frame = cur.take(clen).map_err(bad)?;
                if !room(&mut self.zframe, clen + ZSTD_MAGIC.len())
                    || !room(&mut self.batch, raw_len)
                {
                    return Err(DecodeError::OutOfMemory);
                }
                let mut batch = core::mem::take(&mut self.batch);
                batch.resize(raw_len, 0);
                let r = self.inflate(frame, &mut batch[..]);
                let r = match r {
                    Ok(()) => self.apply_records(target, &batch, offset, next_pfn, stats, false),
                    Err(_) => Err(DecodeError::Malformed { offset }),
                };
                self.batch = batch;
                r?;
                continue;
            }
            self.apply_record(target, t, &mut src, offset, next_pfn, stats)?;
        }
        Ok(())
    }

    /// Applies the records of a ZSPLIT (`src` over its two decompressed streams), which must
    /// use up both streams exactly.
    fn apply_split<T: PageTarget>(
        &mut self,
        target: &mut T,
        src: &mut TwoSrc<'_>,
        offset: usize,
        next_pfn: &mut u64,
        stats: &mut ChunkStats,
    ) -> Result<(), DecodeError<T::Error>> {
        while !src.ctl.is_empty() {
            let t = src
                .ctl
                .u8()
                .map_err(|_| DecodeError::Malformed { offset })?;
            if !matches!(t, tag::ZERO_PAGE | tag::RAW_PAGE | tag::OPS) {
                return Err(DecodeError::Malformed { offset });
            }
            self.apply_record(target, t, src, offset, next_pfn, stats)?;
        }
        if !src.lit.is_empty() {
            return Err(DecodeError::Malformed { offset });
        }
        Ok(())
    }

    /// Applies one page record whose tag `t` was read from `src`.
    fn apply_record<'a, T: PageTarget, S: Src<'a>>(
        &mut self,
        target: &mut T,
        t: u8,
        src: &mut S,
        offset: usize,
        next_pfn: &mut u64,
        stats: &mut ChunkStats,
    ) -> Result<(), DecodeError<T::Error>> {
        let bad = |_| DecodeError::Malformed { offset };
        let page_count = target.page_count();
        let delta = src.ctl().varint().map_err(bad)?;
        let pfn = next_pfn
            .checked_add(delta)
            .ok_or(DecodeError::Malformed { offset })?;
        if pfn >= page_count {
            return Err(DecodeError::PfnOutOfRange { pfn });
        }
        *next_pfn = pfn + 1;
        match t {
            tag::ZERO_PAGE => target.write_zero_page(pfn).map_err(DecodeError::Target)?,
            tag::RAW_PAGE => {
                let data = src.lit(PAGE_SIZE).map_err(bad)?;
                self.page.copy_from_slice(data);
                target
                    .write_page(pfn, &self.page)
                    .map_err(DecodeError::Target)?;
            }
            tag::OPS => {
                let len = src.ctl().varint_max(MAX_OPS_LEN).map_err(bad)?;
                apply_ops(
                    target,
                    pfn,
                    self.block_size,
                    src,
                    len,
                    &mut self.page,
                    offset,
                )?;
            }
            tag::ZOPS => {
                let cur = src.ctl();
                let raw_len = cur.varint_max(MAX_OPS_LEN).map_err(bad)?;
                let clen = cur.varint_max(MAX_CHUNK_LEN).map_err(bad)?;
                let frame = cur.take(clen).map_err(bad)?;
                if !room(&mut self.zframe, clen + ZSTD_MAGIC.len()) {
                    return Err(DecodeError::OutOfMemory);
                }
                let mut ops = core::mem::take(&mut self.ops);
                let r = self
                    .inflate(frame, &mut ops[..raw_len])
                    .map_err(|_| DecodeError::Zstd { pfn });
                let r = r.and_then(|()| {
                    let mut one = OneSrc::new(&ops[..raw_len]);
                    apply_ops(
                        target,
                        pfn,
                        self.block_size,
                        &mut one,
                        raw_len,
                        &mut self.page,
                        offset,
                    )
                });
                self.ops = ops;
                r?;
            }
            other => return Err(DecodeError::UnknownTag { offset, tag: other }),
        }
        stats.records += 1;
        Ok(())
    }

    /// Decompresses the two streams of a ZSPLIT into `streams` (`raw_len` long): the control
    /// stream into its first `ctl_len` bytes, the literal stream into the rest.
    fn inflate_streams(
        &mut self,
        ctl_frame: &[u8],
        lit_frame: &[u8],
        ctl_len: usize,
        streams: &mut [u8],
    ) -> Result<(), Malformed> {
        let raw_len = streams.len();
        let (c, l) = streams.split_at_mut(ctl_len.min(raw_len));
        self.inflate_opt(ctl_frame, c)?;
        self.inflate_opt(lit_frame, l)
    }

    /// Like [`Decoder::inflate`], but an empty `out` must come with an empty frame (no frame).
    fn inflate_opt(&mut self, frame: &[u8], out: &mut [u8]) -> Result<(), Malformed> {
        match (frame.is_empty(), out.is_empty()) {
            (true, true) => Ok(()),
            (false, false) => self.inflate(frame, out),
            _ => Err(Malformed),
        }
    }

    /// Decompresses a magic-less zstd frame into `out`.
    ///
    /// The frame header must declare a single segment whose content size is exactly
    /// `out.len()`, which bounds the window; the zstd decoder's
    /// transient buffers stay within about one zstd block (128 KiB) beyond that.
    fn inflate(&mut self, frame: &[u8], out: &mut [u8]) -> Result<(), Malformed> {
        check_frame_header(frame, out.len())?;
        self.zframe.clear();
        self.zframe.extend_from_slice(&ZSTD_MAGIC);
        self.zframe.extend_from_slice(frame);
        let n = self
            .zdec
            .decode_all(&self.zframe, out)
            .map_err(|_| Malformed)?;
        if n != out.len() {
            return Err(Malformed);
        }
        Ok(())
    }
}

/// Makes room for `n` bytes in `v` without aborting on allocation failure (the large scratch
/// buffers grow fallibly: a refusal instead of an out-of-memory abort in the appliance).
fn room(v: &mut Vec<u8>, n: usize) -> bool {
    v.try_reserve(n.saturating_sub(v.len())).is_ok()
}

/// Checks a magic-less zstd frame header: single segment, no dictionary, content size `raw_len`.
fn check_frame_header(frame: &[u8], raw_len: usize) -> Result<(), Malformed> {
    let mut cur = Cursor::new(frame);
    let fhd = cur.u8()?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let reserved = fhd & 0x08 != 0;
    let dict_flag = fhd & 0x03;
    if !single_segment || reserved || dict_flag != 0 {
        return Err(Malformed);
    }
    let fcs = match fcs_flag {
        0 => u64::from(cur.u8()?),
        1 => {
            let b = cur.take(2)?;
            u64::from(u16::from_le_bytes([b[0], b[1]])) + 256
        }
        2 => {
            let b = cur.take(4)?;
            u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        _ => {
            let b = cur.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        }
    };
    if fcs != raw_len as u64 {
        return Err(Malformed);
    }
    Ok(())
}

/// Where the bytes of records come from: one cursor (records as they are), or the control
/// and literal streams of a [`tag::ZSPLIT`], read in step without merging them.
trait Src<'a> {
    /// The control bytes (for one cursor: all bytes).
    fn ctl(&mut self) -> &mut Cursor<'a>;
    /// The next `n` literal bytes.
    fn lit(&mut self, n: usize) -> Result<&'a [u8], Malformed>;
    /// Bytes consumed so far, in merged-record terms (control plus literal bytes).
    fn used(&self) -> usize;
}

/// Records read from one cursor.
struct OneSrc<'a> {
    cur: Cursor<'a>,
    len: usize,
}

impl<'a> OneSrc<'a> {
    fn new(b: &'a [u8]) -> Self {
        OneSrc {
            cur: Cursor::new(b),
            len: b.len(),
        }
    }
}

impl<'a> Src<'a> for OneSrc<'a> {
    #[inline]
    fn ctl(&mut self) -> &mut Cursor<'a> {
        &mut self.cur
    }
    #[inline]
    fn lit(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        self.cur.take(n)
    }
    #[inline]
    fn used(&self) -> usize {
        self.len - self.cur.remaining()
    }
}

/// Records of a ZSPLIT: control bytes from one stream, literal bytes from the other (the
/// split rules of [`split`]).
struct TwoSrc<'a> {
    ctl: Cursor<'a>,
    lit: Cursor<'a>,
    len: usize,
}

impl<'a> Src<'a> for TwoSrc<'a> {
    #[inline]
    fn ctl(&mut self) -> &mut Cursor<'a> {
        &mut self.ctl
    }
    #[inline]
    fn lit(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        self.lit.take(n)
    }
    #[inline]
    fn used(&self) -> usize {
        self.len - self.ctl.remaining() - self.lit.remaining()
    }
}

/// Reads a zero-run delta covering `target.len()` bytes (pairs from the control bytes, literal
/// bytes through [`Src::lit`]) and applies it: XOR or patch.
fn apply_delta<'a, S: Src<'a>>(src: &mut S, target: &mut [u8], xor: bool) -> Result<(), Malformed> {
    let mut pos = 0usize;
    while pos < target.len() {
        let left = target.len() - pos;
        let c = src.ctl();
        let z = c.varint_max(left)?;
        let l = c.varint_max(left - z)?;
        if z == 0 && l == 0 {
            return Err(Malformed);
        }
        pos += z;
        let lit = src.lit(l)?;
        let dst = target.get_mut(pos..pos + l).ok_or(Malformed)?;
        if xor {
            for (d, s) in dst.iter_mut().zip(lit) {
                *d ^= *s;
            }
        } else {
            dst.copy_from_slice(lit);
        }
        pos += l;
    }
    Ok(())
}

/// Applies an op stream of `len` bytes (in merged-record terms) read from `src` to page `pfn`
/// of `target`. The stream must end exactly after `len` bytes.
#[allow(clippy::too_many_arguments)]
fn apply_ops<'a, T: PageTarget, S: Src<'a>>(
    target: &mut T,
    pfn: u64,
    bs: usize,
    src: &mut S,
    len: usize,
    page: &mut [u8; PAGE_SIZE],
    offset: usize,
) -> Result<(), DecodeError<T::Error>> {
    let bad = |_| DecodeError::Malformed { offset };
    target
        .read_bytes(pfn, 0, &mut page[..])
        .map_err(DecodeError::Target)?;
    let bpp = PAGE_SIZE / bs;
    let total_blocks = target.page_count().saturating_mul(bpp as u64);
    let mut blk = 0usize;
    let mut pred: Option<u64> = None;
    let end = src.used() + len;
    while src.used() < end {
        let cur = src.ctl();
        let b = cur.u8().map_err(bad)?;
        let kind = b >> 5;
        let mut n = usize::from(b & 31) + 1;
        if n == 32 {
            n += cur.varint_max(bpp).map_err(bad)?;
        }
        if n > bpp - blk {
            return Err(DecodeError::Malformed { offset });
        }
        let range = blk * bs..(blk + n) * bs;
        let dst = page
            .get_mut(range)
            .ok_or(DecodeError::Malformed { offset })?;
        match kind {
            op::SKIP => {}
            op::ZERO => dst.fill(0),
            op::LIT => dst.copy_from_slice(src.lit(n * bs).map_err(bad)?),
            op::XOR => apply_delta(src, dst, true).map_err(bad)?,
            op::PATCH => apply_delta(src, dst, false).map_err(bad)?,
            op::REF => {
                let delta = varint::unzigzag(cur.varint().map_err(bad)?);
                let base = pred.unwrap_or(pfn * bpp as u64 + blk as u64);
                let s0 = base
                    .checked_add_signed(delta)
                    .filter(|s| s.checked_add(n as u64).is_some_and(|e| e <= total_blocks))
                    .ok_or(DecodeError::RefOutOfRange { pfn })?;
                for (i, d) in dst.chunks_exact_mut(bs).enumerate() {
                    let s = s0 + i as u64;
                    let off = (s % bpp as u64) as usize * bs;
                    target
                        .read_bytes(s / bpp as u64, off, d)
                        .map_err(DecodeError::Target)?;
                }
                pred = Some(s0 + n as u64);
            }
            _ => return Err(DecodeError::Malformed { offset }),
        }
        blk += n;
    }
    if src.used() != end {
        return Err(DecodeError::Malformed { offset });
    }
    target.write_page(pfn, page).map_err(DecodeError::Target)
}

/// A flat in-memory image implementing [`PageTarget`] (tests, the bench, simple receivers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatImage {
    /// The bytes, `page_count * PAGE_SIZE` long.
    pub bytes: Vec<u8>,
}

impl FlatImage {
    /// An all-zero image of `pages` pages.
    pub fn zeroed(pages: usize) -> Self {
        FlatImage {
            bytes: vec![0u8; pages * PAGE_SIZE],
        }
    }
}

impl PageTarget for FlatImage {
    type Error = core::convert::Infallible;
    fn page_count(&self) -> u64 {
        (self.bytes.len() / PAGE_SIZE) as u64
    }
    fn read_bytes(&mut self, pfn: u64, offset: usize, out: &mut [u8]) -> Result<(), Self::Error> {
        let start = pfn as usize * PAGE_SIZE + offset;
        out.copy_from_slice(&self.bytes[start..start + out.len()]);
        Ok(())
    }
    fn write_page(&mut self, pfn: u64, data: &[u8; PAGE_SIZE]) -> Result<(), Self::Error> {
        let start = pfn as usize * PAGE_SIZE;
        self.bytes[start..start + PAGE_SIZE].copy_from_slice(data);
        Ok(())
    }
    fn write_zero_page(&mut self, pfn: u64) -> Result<(), Self::Error> {
        let start = pfn as usize * PAGE_SIZE;
        self.bytes[start..start + PAGE_SIZE].fill(0);
        Ok(())
    }
}
