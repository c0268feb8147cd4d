//! Primary-side FGBI encoder (std).

use crate::{
    check_block_size, op, tag, varint, zrle, BlockSizeError, MAX_BATCH_LEN, MAX_CHUNK_LEN,
    MAX_OPS_LEN, MAX_RECORD_LEN, PAGE_SIZE,
};
use xxhash_rust::xxh3::xxh3_64;

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Block size in bytes (power of two, 32..=4096).
    pub block_size: usize,
    /// log2 of the number of content-index slots (8 bytes each: block position and a 32-bit
    /// hash tag); `None` picks one slot per four blocks of the image (about 3% of the image
    /// size at 64-byte blocks).
    pub index_slots_log2: Option<u32>,
    /// zstd level for compressed op streams.
    pub zstd_level: i32,
    /// Largest chunk emitted (at most [`MAX_CHUNK_LEN`]; raised to the smallest workable size).
    pub max_chunk_len: usize,
    /// Records are gathered into batches of about this many bytes, each compressed with zstd as
    /// a whole when that is smaller ([`tag::ZBATCH`]). 0 disables batches; page op streams are
    /// then compressed one by one ([`tag::ZOPS`]) when that is smaller.
    pub batch_len: usize,
    /// Deltas carry the new bytes ([`op::PATCH`], compresses better) rather than XOR values
    /// ([`op::XOR`]); both have the same zero-run structure and size before compression.
    pub patch: bool,
    /// Batches are written as [`tag::ZSPLIT`] (format version 2: control and literal bytes in
    /// separate zstd streams) rather than [`tag::ZBATCH`] (version 1).
    pub split: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            block_size: crate::DEFAULT_BLOCK_SIZE,
            index_slots_log2: None,
            zstd_level: 1,
            max_chunk_len: MAX_CHUNK_LEN,
            // Measured on captured memory: 248 KiB batches (the most that fits the decoder's
            // 256 KiB batch limit with a whole record to spare) are 0.5-2% smaller than 128 KiB.
            batch_len: 248 * 1024,
            patch: true,
            split: true,
        }
    }
}

/// The primary's memory held by the encoder, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOverhead {
    /// Shadow copy of the content last sent (one byte per byte of image).
    pub shadow: usize,
    /// Content index (8 bytes per slot).
    pub index: usize,
    /// Undo log of the current epoch (old content of pages changed since the last commit).
    pub undo: usize,
    /// Scratch buffers, chunk buffer and bitmaps.
    pub scratch: usize,
}

impl MemoryOverhead {
    /// Sum of all parts.
    pub fn total(&self) -> usize {
        self.shadow + self.index + self.undo + self.scratch
    }
}

/// Counters of what the encoder did since the last [`Encoder::take_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Pages offered to [`Encoder::encode_page`].
    pub pages_in: u64,
    /// Offered pages identical to the last sent version (no record).
    pub pages_unchanged: u64,
    /// Records of each kind.
    pub zero_pages: u64,
    /// Raw page records.
    pub raw_pages: u64,
    /// Op-stream records.
    pub ops_pages: u64,
    /// zstd op-stream records.
    pub zops_pages: u64,
    /// Compressed batches written.
    pub batches: u64,
    /// Changed blocks.
    pub blocks_changed: u64,
    /// Changed blocks sent as references.
    pub blocks_ref: u64,
    /// Changed blocks that became zero.
    pub blocks_zero: u64,
    /// Bytes of records written.
    pub bytes_out: u64,
    /// Control bytes of split batches ([`tag::ZSPLIT`]) before zstd.
    pub ctl_raw: u64,
    /// Those control bytes after zstd.
    pub ctl_z: u64,
    /// Literal bytes of split batches before zstd.
    pub lit_raw: u64,
    /// Those literal bytes after zstd.
    pub lit_z: u64,
}

const EMPTY: u32 = u32::MAX;
const EMPTY_SLOT: u64 = EMPTY as u64;
/// Only blocks with at least this many changed bytes are looked up in the content index
/// (below it, a delta costs about as much as a reference).
const REF_MIN_DIFF: usize = 8;
/// Below this op-stream length zstd is not tried.
const ZSTD_MIN: usize = 48;
/// A changed block with at least DENSE_NUM/DENSE_DEN of its bytes changed is sent literally
/// (measured on real memory: sending half-changed blocks literally compresses worse than
/// patching them, so only blocks changed in every byte qualify).
const DENSE_NUM: usize = 1;
const DENSE_DEN: usize = 1;
/// zstd match length and hash-table size for the fast levels (1 and 2).
const ZSTD_MIN_MATCH: u32 = 5;
const ZSTD_HASH_LOG: u32 = 16;
/// Undo-log capacity kept across epochs.
const UNDO_KEEP: usize = 64 << 20;
/// Room kept in a chunk beyond records for a batch header.
const SLACK: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Skip,
    Zero,
    Xor,
    Lit,
    Ref(u64),
}

/// FGBI encoder for one VM image.
///
/// Keeps a shadow of what the backup holds (the committed image plus the records of the current
/// epoch), a direct-mapped content index of block hashes to block positions (always verified by
/// byte comparison against the shadow, so two different blocks are never confused), and an undo
/// log so that an epoch that did not commit can be rolled back.
pub struct Encoder {
    cfg: EncoderConfig,
    bs: usize,
    bpp: usize,
    page_count: u64,
    shadow: Vec<u8>,
    index: Vec<u64>,
    cands: Vec<u64>,
    mask: u64,
    undo_blocks: Vec<u32>,
    undo_data: Vec<u8>,
    zc: zstd::bulk::Compressor<'static>,
    ops: Vec<u8>,
    ops2: Vec<u8>,
    zout: Vec<u8>,
    zout2: Vec<u8>,
    ctl: Vec<u8>,
    lit: Vec<u8>,
    /// Literal bytes of the op stream in `ops` (position, length), as [`split`](crate::split)
    /// defines them.
    ops_spans: Vec<(u32, u32)>,
    /// Literal bytes of the open batch (position, length), in order.
    batch_spans: Vec<(u32, u32)>,
    /// Whether `batch_spans` describes the open batch (false once it holds a ZOPS record).
    batch_splittable: bool,
    chunk: Vec<u8>,
    batch: Vec<u8>,
    next_pfn: u64,
    kinds: Vec<Kind>,
    hashes: Vec<u64>,
    /// Byte mask of the current page (bit set: byte differs from the shadow).
    dmask: Box<[u64; PAGE_SIZE / 64]>,
    /// Differing bytes per block of the current page.
    dcount: Vec<u32>,
    stats: EncodeStats,
    /// Analysis hook: sees the control and literal bytes of each split batch before zstd.
    tap: Option<StreamTap>,
}

/// See [`Encoder::set_stream_tap`].
pub type StreamTap = Box<dyn FnMut(&[u8], &[u8]) + Send>;

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("cfg", &self.cfg)
            .field("page_count", &self.page_count)
            .finish()
    }
}

/// Whether a block is all zeros (16 bytes at a time).
#[inline]
fn is_zero(n: &[u8]) -> bool {
    let mut nz = 0u128;
    for y in n.chunks_exact(16) {
        nz |= u128::from_ne_bytes(y.try_into().unwrap_or([0; 16]));
    }
    nz == 0
}

/// The zstd context the encoder compresses batches with at `level` (also for tools that time
/// zstd alone on the same streams).
pub fn batch_compressor(level: i32) -> zstd::bulk::Compressor<'static> {
    let mut zc = zstd::bulk::Compressor::new(level).expect("zstd context");
    if (1..=2).contains(&level) {
        // Tuned on captured guest memory (tools/bench/results/README.md): matches of 5 bytes
        // (default 6) and a 64 Ki-entry hash table (default 8-16 Ki for batch-sized inputs) make
        // batches 2-7% smaller for about 2% more encoder instructions. Frames stay
        // standard (no dictionary, same window), so the decoder is unaffected.
        use zstd::zstd_safe::CParameter;
        let _ = zc.set_parameter(CParameter::MinMatch(ZSTD_MIN_MATCH));
        let _ = zc.set_parameter(CParameter::HashLog(ZSTD_HASH_LOG));
    }
    zc
}

/// Number of differing bytes of block `b` (of `bs` bytes) from the page's byte mask.
#[inline]
fn block_diff_count(m: &[u64; PAGE_SIZE / 64], b: usize, bs: usize) -> usize {
    if bs == 64 {
        m[b % (PAGE_SIZE / 64)].count_ones() as usize
    } else if bs > 64 {
        let w = b * bs / 64;
        m[w..w + bs / 64]
            .iter()
            .map(|x| x.count_ones() as usize)
            .sum()
    } else {
        let bit = b * bs;
        ((m[bit / 64] >> (bit % 64)) & ((1u64 << bs) - 1)).count_ones() as usize
    }
}

/// zstd-compresses `src` into `zout`; returns the frame size without its magic number.
fn compress(
    zc: &mut zstd::bulk::Compressor<'static>,
    src: &[u8],
    zout: &mut Vec<u8>,
) -> Option<usize> {
    zout.clear();
    match zc.compress_to_buffer(src, zout) {
        Ok(n) if n > 4 && zout[..4] == crate::ZSTD_MAGIC => Some(n - 4),
        _ => None,
    }
}

/// Appends a delta op (PATCH or XOR) for the blocks `b..e` of the page `old` → `new` (byte
/// mask `m`), or a LIT op if the delta would not be smaller; returns whether LIT was used.
/// The literal spans of the op stream (`spans`, see `Encoder::ops_spans`) are kept in step.
#[allow(clippy::too_many_arguments)]
fn put_delta(
    ops: &mut Vec<u8>,
    spans: &mut Vec<(u32, u32)>,
    old: &[u8],
    new: &[u8],
    m: &[u64],
    b: usize,
    e: usize,
    bs: usize,
    patch: bool,
) -> bool {
    let n = e - b;
    let start = ops.len();
    put_op(ops, if patch { op::PATCH } else { op::XOR }, n);
    let body = ops.len();
    zrle::encode_masked_spans(old, new, m, b * bs, e * bs, ops, !patch, spans);
    if ops.len() - body >= n * bs {
        truncate_ops(ops, spans, start);
        put_op(ops, op::LIT, n);
        spans.push((ops.len() as u32, (n * bs) as u32));
        ops.extend_from_slice(&new[b * bs..e * bs]);
        true
    } else {
        false
    }
}

/// Truncates an op stream and its literal spans to `len` bytes.
fn truncate_ops(ops: &mut Vec<u8>, spans: &mut Vec<(u32, u32)>, len: usize) {
    ops.truncate(len);
    while spans.last().is_some_and(|&(s, _)| s as usize >= len) {
        spans.pop();
    }
}

fn put_op(out: &mut Vec<u8>, kind: u8, n: usize) {
    if n >= 32 {
        out.push(kind << 5 | 31);
        varint::put(out, (n - 32) as u64);
    } else {
        out.push(kind << 5 | (n - 1) as u8);
    }
}

impl Encoder {
    /// An encoder for an image of `page_count` pages whose backup copy is all zeros.
    pub fn new(cfg: EncoderConfig, page_count: u64) -> Result<Self, BlockSizeError> {
        check_block_size(cfg.block_size)?;
        let bs = cfg.block_size;
        let bpp = PAGE_SIZE / bs;
        let total_blocks = page_count * bpp as u64;
        // Block positions are stored as u32 in the index.
        if total_blocks >= u64::from(EMPTY) {
            return Err(BlockSizeError(bs));
        }
        let log2 = cfg.index_slots_log2.unwrap_or_else(|| {
            (total_blocks / 4)
                .max(1024)
                .next_power_of_two()
                .trailing_zeros()
        });
        let slots = 1usize << log2.min(32);
        let zc = batch_compressor(cfg.zstd_level);
        Ok(Encoder {
            cfg: EncoderConfig {
                max_chunk_len: cfg
                    .max_chunk_len
                    .clamp(MAX_RECORD_LEN + SLACK, MAX_CHUNK_LEN),
                batch_len: cfg.batch_len.min(MAX_BATCH_LEN - MAX_RECORD_LEN),
                ..cfg
            },
            bs,
            bpp,
            page_count,
            shadow: vec![0u8; page_count as usize * PAGE_SIZE],
            index: vec![EMPTY_SLOT; slots],
            cands: vec![EMPTY_SLOT; bpp],
            mask: slots as u64 - 1,
            undo_blocks: Vec::new(),
            undo_data: Vec::new(),
            zc,
            ops: Vec::with_capacity(MAX_OPS_LEN + 64),
            ops2: Vec::with_capacity(MAX_OPS_LEN + 64),
            zout: Vec::with_capacity(zstd::zstd_safe::compress_bound(MAX_BATCH_LEN) + 64),
            zout2: Vec::with_capacity(zstd::zstd_safe::compress_bound(MAX_BATCH_LEN) + 64),
            ctl: Vec::with_capacity(MAX_BATCH_LEN),
            lit: Vec::with_capacity(MAX_BATCH_LEN),
            ops_spans: Vec::with_capacity(PAGE_SIZE / 2),
            batch_spans: Vec::new(),
            batch_splittable: true,
            chunk: Vec::with_capacity(MAX_CHUNK_LEN),
            batch: Vec::with_capacity(MAX_BATCH_LEN),
            next_pfn: 0,
            kinds: vec![Kind::Skip; bpp],
            hashes: vec![0; bpp],
            dmask: Box::new([0; PAGE_SIZE / 64]),
            dcount: vec![0; bpp],
            stats: EncodeStats::default(),
            tap: None,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Number of pages of the image.
    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// The content the backup holds (committed image plus this epoch's records so far).
    pub fn shadow(&self) -> &[u8] {
        &self.shadow
    }

    /// The primary-side memory held by this encoder.
    pub fn memory_overhead(&self) -> MemoryOverhead {
        MemoryOverhead {
            shadow: self.shadow.capacity(),
            index: self.index.capacity() * 8,
            undo: self.undo_data.capacity() + self.undo_blocks.capacity() * 4,
            scratch: self.ops.capacity()
                + self.ops2.capacity()
                + self.zout.capacity()
                + self.zout2.capacity()
                + self.ctl.capacity()
                + self.lit.capacity()
                + (self.ops_spans.capacity() + self.batch_spans.capacity()) * 8
                + self.chunk.capacity()
                + self.batch.capacity()
                + self.kinds.capacity() * std::mem::size_of::<Kind>()
                + self.hashes.capacity() * 8
                + PAGE_SIZE / 8
                + self.dcount.capacity() * 4
                + self.cands.capacity() * 8,
        }
    }

    /// For analysis tools (entropy bounds, other compressors): `tap` is called with the
    /// control and the literal bytes of every split batch before they are compressed.
    pub fn set_stream_tap(&mut self, tap: Option<StreamTap>) {
        self.tap = tap;
    }

    /// Returns and resets the counters.
    pub fn take_stats(&mut self) -> EncodeStats {
        std::mem::take(&mut self.stats)
    }

    /// Slot of a hash: its low bits (the high 32 bits are the tag kept in the slot).
    #[inline]
    fn slot(&self, h: u64) -> usize {
        (h & self.mask) as usize
    }

    /// Encodes page `pfn` (a dirty page) into the current chunk, calling `emit` with each chunk
    /// that fills up. Pages identical to the last sent version produce nothing.
    ///
    /// # Panics
    /// If `pfn` is not below [`Encoder::page_count`] (the caller's bug, not input data).
    pub fn encode_page(&mut self, pfn: u64, page: &[u8; PAGE_SIZE], emit: &mut dyn FnMut(&[u8])) {
        assert!(pfn < self.page_count, "pfn {pfn} beyond the image");
        self.stats.pages_in += 1;
        let base = pfn as usize * PAGE_SIZE;
        let bs = self.bs;
        let bpp = self.bpp;
        // 1. One pass over the page: the mask of changed bytes, then per block whether it
        // changed and (only for changed blocks) whether it became zero.
        // Blocks are tracked as bit masks (at most 128 blocks a page) so that the later passes
        // visit changed blocks only.
        let mut cmask = 0u128;
        let mut zmask = 0u128;
        {
            let old = &self.shadow[base..base + PAGE_SIZE];
            zrle::diff_mask(old, page, &mut self.dmask[..]);
            for b in 0..bpp {
                let d = block_diff_count(&self.dmask, b, bs);
                self.dcount[b] = d as u32;
                cmask |= u128::from(d != 0) << b;
            }
            // `kinds` is all Skip between pages (step 5 resets the changed blocks).
            debug_assert!(self.kinds.iter().all(|&k| k == Kind::Skip));
            let mut m = cmask;
            while m != 0 {
                let b = m.trailing_zeros() as usize;
                m &= m - 1;
                self.kinds[b] = if is_zero(&page[b * bs..(b + 1) * bs]) {
                    zmask |= 1 << b;
                    Kind::Zero
                } else {
                    Kind::Xor
                };
            }
        }
        let changed = cmask.count_ones() as usize;
        let changed_zero = zmask.count_ones() as usize;
        let mut hmask = 0u128;
        if changed == 0 {
            self.stats.pages_unchanged += 1;
            return;
        }
        let all_zero = changed_zero == changed && is_zero(page);
        self.stats.blocks_changed += changed as u64;
        if pfn < self.next_pfn {
            self.flush(emit);
        } else if self.chunk.len() + self.batch.len() + MAX_RECORD_LEN + SLACK
            > self.cfg.max_chunk_len
        {
            self.seal_batch();
            if self.chunk.len() + MAX_RECORD_LEN + SLACK > self.cfg.max_chunk_len {
                self.flush(emit);
            }
        }
        let delta = pfn - self.next_pfn;
        self.next_pfn = pfn + 1;
        let first_blk = pfn * bpp as u64;

        if all_zero {
            self.batch.push(tag::ZERO_PAGE);
            varint::put(&mut self.batch, delta);
            self.stats.zero_pages += 1;
        } else {
            // 2. References for changed non-zero blocks whose content the backup has. First
            // all index loads (independent, so their cache misses overlap), then verification.
            // Blocks with only a few changed bytes (counters, pointers) are neither looked up
            // nor indexed: a delta is as small as a reference for them, and skipping them saves
            // most random index accesses. Hash 0 marks them.
            let mut m = cmask & !zmask;
            while m != 0 {
                let b = m.trailing_zeros() as usize;
                m &= m - 1;
                let n = &page[b * bs..(b + 1) * bs];
                let d = self.dcount[b] as usize;
                if d < REF_MIN_DIFF {
                    continue;
                }
                hmask |= 1 << b;
                if d * DENSE_DEN >= bs * DENSE_NUM {
                    // Entirely new content: literal, unless a reference is found below.
                    self.kinds[b] = Kind::Lit;
                }
                let h = xxh3_64(n) | 1;
                self.hashes[b] = h;
                self.cands[b] = self.index[self.slot(h)];
            }
            let mut m = hmask;
            while m != 0 {
                let b = m.trailing_zeros() as usize;
                m &= m - 1;
                let h = self.hashes[b];
                let cand = self.cands[b];
                if cand as u32 == EMPTY || (cand >> 32) as u32 != (h >> 32) as u32 {
                    continue;
                }
                let n = &page[b * bs..(b + 1) * bs];
                let c = u64::from(cand as u32);
                let cs = c as usize * bs;
                // Never trust the hash: compare the bytes the backup holds.
                if c != first_blk + b as u64 && self.shadow[cs..cs + bs] == *n {
                    self.kinds[b] = Kind::Ref(c);
                }
            }

            // 3. Op stream with runs.
            self.ops.clear();
            self.ops_spans.clear();
            let mut pred: Option<u64> = None;
            let mut b = 0;
            while b < bpp {
                let k = self.kinds[b];
                let mut e = b + 1;
                match k {
                    Kind::Ref(src) => {
                        while e < bpp && self.kinds[e] == Kind::Ref(src + (e - b) as u64) {
                            e += 1;
                        }
                    }
                    Kind::Xor => {
                        // A delta run also swallows unchanged blocks up to the next delta block:
                        // a longer zero run costs less than closing the op and opening another.
                        loop {
                            while e < bpp && self.kinds[e] == k {
                                e += 1;
                            }
                            let mut f = e;
                            while f < bpp && self.kinds[f] == Kind::Skip {
                                f += 1;
                            }
                            if f < bpp && self.kinds[f] == Kind::Xor {
                                e = f;
                            } else {
                                break;
                            }
                        }
                    }
                    _ => {
                        while e < bpp && self.kinds[e] == k {
                            e += 1;
                        }
                    }
                }
                let n = e - b;
                match k {
                    Kind::Skip => {
                        if e < bpp {
                            put_op(&mut self.ops, op::SKIP, n);
                        }
                    }
                    Kind::Zero => {
                        put_op(&mut self.ops, op::ZERO, n);
                        self.stats.blocks_zero += n as u64;
                    }
                    Kind::Ref(src) => {
                        put_op(&mut self.ops, op::REF, n);
                        let p = pred.unwrap_or(first_blk + b as u64);
                        varint::put(&mut self.ops, varint::zigzag(src as i64 - p as i64));
                        pred = Some(src + n as u64);
                        self.stats.blocks_ref += n as u64;
                    }
                    Kind::Lit => {
                        put_op(&mut self.ops, op::LIT, n);
                        self.ops_spans
                            .push((self.ops.len() as u32, (n * bs) as u32));
                        self.ops.extend_from_slice(&page[b * bs..e * bs]);
                    }
                    Kind::Xor => {
                        let start = self.ops.len();
                        let lit = self.put_delta_blocks(base, page, b, e);
                        if lit && self.kinds[b..e].contains(&Kind::Skip) {
                            // Mostly new content: literal blocks, but keep the unchanged
                            // blocks of the run as skips.
                            truncate_ops(&mut self.ops, &mut self.ops_spans, start);
                            let mut i = b;
                            while i < e {
                                let mut j = i;
                                let skip = self.kinds[i] == Kind::Skip;
                                while j < e && (self.kinds[j] == Kind::Skip) == skip {
                                    j += 1;
                                }
                                if skip {
                                    put_op(&mut self.ops, op::SKIP, j - i);
                                } else {
                                    self.put_delta_blocks(base, page, i, j);
                                }
                                i = j;
                            }
                        }
                    }
                }
                b = e;
            }

            // 4. Choose by measured size.
            let ops_len = self.ops.len();
            let ops_size = varint::len(ops_len as u64) + ops_len;
            let raw_size = PAGE_SIZE;
            let mut best = if ops_size < raw_size { 1 } else { 0 }; // 0 raw, 1 ops, 2 zops(ops), 3 zops(lit)
            let mut best_size = ops_size.min(raw_size);
            if ops_len >= ZSTD_MIN && self.cfg.batch_len == 0 {
                if let Some(s) = compress(&mut self.zc, &self.ops, &mut self.zout) {
                    let total = varint::len(ops_len as u64) + varint::len(s as u64) + s;
                    if total < best_size {
                        best = 2;
                        best_size = total;
                    }
                }
                // Mostly rewritten page: also try zstd of the literal page.
                if changed * 2 > bpp {
                    self.ops2.clear();
                    put_op(&mut self.ops2, op::LIT, bpp);
                    self.ops2.extend_from_slice(page);
                    if let Some(s) = compress(&mut self.zc, &self.ops2, &mut self.zout2) {
                        let total = varint::len(self.ops2.len() as u64) + varint::len(s as u64) + s;
                        if total < best_size {
                            best = 3;
                        }
                    }
                }
            }
            match best {
                0 => {
                    self.batch.push(tag::RAW_PAGE);
                    varint::put(&mut self.batch, delta);
                    self.batch_spans
                        .push((self.batch.len() as u32, PAGE_SIZE as u32));
                    self.batch.extend_from_slice(page);
                    self.stats.raw_pages += 1;
                }
                1 => {
                    self.batch.push(tag::OPS);
                    varint::put(&mut self.batch, delta);
                    varint::put(&mut self.batch, ops_len as u64);
                    let base = self.batch.len() as u32;
                    self.batch_spans
                        .extend(self.ops_spans.iter().map(|&(s, l)| (base + s, l)));
                    self.batch.extend_from_slice(&self.ops);
                    self.stats.ops_pages += 1;
                }
                _ => {
                    let (raw_len, z) = if best == 2 {
                        (ops_len, &self.zout)
                    } else {
                        (self.ops2.len(), &self.zout2)
                    };
                    // Not splittable (only written without batches, which are never split).
                    self.batch_splittable = false;
                    self.batch.push(tag::ZOPS);
                    varint::put(&mut self.batch, delta);
                    varint::put(&mut self.batch, raw_len as u64);
                    varint::put(&mut self.batch, (z.len() - 4) as u64);
                    self.batch.extend_from_slice(&z[4..]);
                    self.stats.zops_pages += 1;
                }
            }
        }
        if self.batch.len() >= self.cfg.batch_len {
            self.seal_batch();
        }

        // 5. Update undo log, shadow and index, run by run of changed blocks.
        let mut m = cmask;
        while m != 0 {
            let b = m.trailing_zeros() as usize;
            let e = b + (!(m >> b)).trailing_zeros() as usize;
            m = if e >= 128 { 0 } else { m & (!0u128 << e) };
            for blk in b..e {
                if hmask >> blk & 1 != 0 {
                    let h = self.hashes[blk];
                    let s = self.slot(h);
                    self.index[s] = (h >> 32) << 32 | (first_blk + blk as u64);
                }
                self.undo_blocks.push((first_blk + blk as u64) as u32);
                self.kinds[blk] = Kind::Skip;
            }
            let r = base + b * bs..base + e * bs;
            self.undo_data.extend_from_slice(&self.shadow[r.clone()]);
            self.shadow[r].copy_from_slice(&page[b * bs..e * bs]);
        }
    }

    /// [`put_delta`] of blocks `b..e` of `page` (at byte `base` of the image) against its shadow
    /// into the page's op stream.
    fn put_delta_blocks(
        &mut self,
        base: usize,
        page: &[u8; PAGE_SIZE],
        b: usize,
        e: usize,
    ) -> bool {
        let old = &self.shadow[base..base + PAGE_SIZE];
        put_delta(
            &mut self.ops,
            &mut self.ops_spans,
            old,
            page,
            &self.dmask[..],
            b,
            e,
            self.bs,
            self.cfg.patch,
        )
    }

    /// Moves the open batch into the chunk, compressed as one [`tag::ZBATCH`] record when that is
    /// smaller.
    fn seal_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self.cfg.batch_len > 0 && self.batch.len() >= ZSTD_MIN && self.cfg.split {
            // Version 2: control bytes and literal bytes in two zstd streams, so that zstd
            // models each on its own (measured on captured memory: 4-10% smaller than one
            // stream, at about the same cost).
            self.ctl.clear();
            self.lit.clear();
            if self.batch_splittable {
                // The literal spans recorded while writing the records: no second parse.
                let mut at = 0usize;
                for &(s, l) in &self.batch_spans {
                    let (s, l) = (s as usize, l as usize);
                    self.ctl.extend_from_slice(&self.batch[at..s]);
                    self.lit.extend_from_slice(&self.batch[s..s + l]);
                    at = s + l;
                }
                self.ctl.extend_from_slice(&self.batch[at..]);
                #[cfg(debug_assertions)]
                {
                    let (mut c, mut l) = (Vec::new(), Vec::new());
                    crate::split::split(&self.batch, self.bs, &mut c, &mut l).expect("split");
                    assert!(
                        c == self.ctl && l == self.lit,
                        "literal spans disagree with split::split"
                    );
                }
                if let Some(tap) = self.tap.as_mut() {
                    tap(&self.ctl, &self.lit);
                }
                let cc = if self.ctl.is_empty() {
                    Some(0)
                } else {
                    compress(&mut self.zc, &self.ctl, &mut self.zout)
                };
                let lc = if self.lit.is_empty() {
                    Some(0)
                } else {
                    compress(&mut self.zc, &self.lit, &mut self.zout2)
                };
                if let (Some(cc), Some(lc)) = (cc, lc) {
                    let total = 1
                        + varint::len(self.batch.len() as u64)
                        + varint::len(self.ctl.len() as u64)
                        + varint::len(cc as u64)
                        + cc
                        + varint::len(lc as u64)
                        + lc;
                    if total < self.batch.len() {
                        self.chunk.push(tag::ZSPLIT);
                        varint::put(&mut self.chunk, self.batch.len() as u64);
                        varint::put(&mut self.chunk, self.ctl.len() as u64);
                        varint::put(&mut self.chunk, cc as u64);
                        if cc > 0 {
                            self.chunk.extend_from_slice(&self.zout[4..]);
                        }
                        varint::put(&mut self.chunk, lc as u64);
                        if lc > 0 {
                            self.chunk.extend_from_slice(&self.zout2[4..]);
                        }
                        self.stats.ctl_raw += self.ctl.len() as u64;
                        self.stats.ctl_z += cc as u64;
                        self.stats.lit_raw += self.lit.len() as u64;
                        self.stats.lit_z += lc as u64;
                        self.clear_batch();
                        self.stats.batches += 1;
                        return;
                    }
                }
            }
        }
        if self.cfg.batch_len > 0 && self.batch.len() >= ZSTD_MIN && !self.cfg.split {
            if let Some(c) = compress(&mut self.zc, &self.batch, &mut self.zout) {
                let total = 1 + varint::len(self.batch.len() as u64) + varint::len(c as u64) + c;
                if total < self.batch.len() {
                    self.chunk.push(tag::ZBATCH);
                    varint::put(&mut self.chunk, self.batch.len() as u64);
                    varint::put(&mut self.chunk, c as u64);
                    self.chunk.extend_from_slice(&self.zout[4..]);
                    self.clear_batch();
                    self.stats.batches += 1;
                    return;
                }
            }
        }
        self.chunk.extend_from_slice(&self.batch);
        self.clear_batch();
    }

    fn clear_batch(&mut self) {
        self.batch.clear();
        self.batch_spans.clear();
        self.batch_splittable = true;
    }

    /// Emits the current chunk (with the open batch) if it is not empty.
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) {
        self.seal_batch();
        if !self.chunk.is_empty() {
            self.stats.bytes_out += self.chunk.len() as u64;
            emit(&self.chunk);
            self.chunk.clear();
        }
        self.next_pfn = 0;
    }

    /// Encodes the pages `dirty` (ascending pfns give the smallest output) of `image` (the whole
    /// guest image, `page_count * PAGE_SIZE` bytes) as one epoch, emitting its chunks. The epoch
    /// stays open: call [`Encoder::commit_epoch`] when the backup acknowledged its COMMIT, or
    /// [`Encoder::abort_epoch`] if it did not.
    pub fn encode_epoch(
        &mut self,
        image: &[u8],
        dirty: impl IntoIterator<Item = u64>,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        for pfn in dirty {
            let s = pfn as usize * PAGE_SIZE;
            let page: &[u8; PAGE_SIZE] = image[s..s + PAGE_SIZE].try_into().expect("page");
            self.encode_page(pfn, page, emit);
        }
        self.flush(emit);
    }

    /// The backup committed the epoch: forget the undo log.
    pub fn commit_epoch(&mut self) {
        self.undo_blocks.clear();
        self.undo_data.clear();
        // Do not keep the capacity of an unusually large epoch (the first, full one) beyond
        // UNDO_KEEP, but keep that much: its memory is already mapped, and growing the log
        // again in later epochs costs page faults inside the encode (measured: a steady
        // epoch that grows the log encodes several times slower).
        if self.undo_data.capacity() > UNDO_KEEP {
            self.undo_data.shrink_to(UNDO_KEEP);
            self.undo_blocks.shrink_to(UNDO_KEEP / self.bs);
        }
    }

    /// The epoch did not commit (connection lost, backup refused): restore the shadow to the
    /// last committed image and drop the unsent chunk. Index entries pointing at rolled-back
    /// content are harmless: every candidate is verified against the shadow.
    ///
    /// The caller must offer the pages of the aborted epoch again in the next one (OR its dirty
    /// set into the next), since the backup discarded them. One epoch is in flight at a time:
    /// the next epoch starts after `commit_epoch` or `abort_epoch`.
    pub fn abort_epoch(&mut self) {
        let bs = self.bs;
        for (i, &blk) in self.undo_blocks.iter().enumerate().rev() {
            let s = blk as usize * bs;
            self.shadow[s..s + bs].copy_from_slice(&self.undo_data[i * bs..(i + 1) * bs]);
        }
        self.undo_blocks.clear();
        self.undo_data.clear();
        self.chunk.clear();
        self.clear_batch();
        self.next_pfn = 0;
    }
}
