//! Replays a directory of raw memory images (one per epoch) through FGBI — encoder, decoder and
//! checkpoint store — and through three baselines, checking every decoded image byte for byte
//! and measuring sizes and speeds.
//!
//! Dirty pages: epoch 0 sends every page (a full first checkpoint); later epochs send the pages
//! whose content differs from the previous image (the images carry no dirty log, so pages
//! rewritten with identical bytes are not counted; this favours no method in particular).
//!
//! Baselines, all over the same dirty pages, payload only (no page numbers, which all methods
//! need alike; FGBI's byte counts do include its page numbers and record headers):
//! * `zstd`: the epoch's dirty pages concatenated, one zstd stream (level given, default 1);
//! * `xbzrle`: per page, XOR with the previous version, zero-run coded (the same coding FGBI
//!   uses), a varint length, raw page if the delta is larger (as QEMU's XBZRLE does);
//! * `xbzrle+zstd`: that stream compressed with one zstd stream.
//!
//! Speeds: bytes of dirty pages (Remus bytes) per second, FGBI encode compared with a memcpy of
//! the same dirty pages. Each is timed twice: with the wall clock, and with the thread's CPU
//! time ([`thread_cpu`]). On a shared machine the wall clock also counts the time other
//! processes hold the CPU, which hits a long stretch (an encode) far more often than a
//! millisecond memcpy; the CPU-time figures measure the same work without that bias.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use resilire_codec::{zrle, Cursor, Decoder, Encoder, EncoderConfig, PAGE_SIZE};
use resilire_store::{HeapFrames, Store};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bench options.
#[derive(Debug, Clone)]
pub struct Options {
    /// FGBI block size.
    pub block_size: usize,
    /// zstd level for the baselines and FGBI's compressed op streams.
    pub zstd_level: i32,
    /// Use at most this many images.
    pub max_epochs: usize,
    /// FGBI batch length (0: no batches, per-page zstd).
    pub batch_len: usize,
    /// FGBI deltas as patches (new bytes) rather than XOR values.
    pub patch: bool,
    /// zstd level of FGBI's batches, if different from `zstd_level`.
    pub fgbi_level: Option<i32>,
    /// log2 of FGBI's content-index slots (default: the encoder's choice).
    pub index_log2: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block_size: 64,
            zstd_level: 1,
            max_epochs: usize::MAX,
            batch_len: EncoderConfig::default().batch_len,
            patch: true,
            fgbi_level: None,
            index_log2: None,
        }
    }
}

/// Sizes (bytes) and times (seconds) of one epoch or a sum of epochs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Epochs summed.
    pub epochs: u64,
    /// Dirty pages.
    pub dirty_pages: u64,
    /// Bytes Remus would send (whole dirty pages).
    pub remus: u64,
    /// zstd of whole dirty pages.
    pub zstd: u64,
    /// XBZRLE-style delta.
    pub xbzrle: u64,
    /// XBZRLE delta + zstd.
    pub xbzrle_zstd: u64,
    /// FGBI chunks.
    pub fgbi: u64,
    /// Encode seconds: FGBI, zstd, xbzrle, xbzrle+zstd.
    pub enc_s: [f64; 4],
    /// Decode seconds: FGBI (into the store, with commit), zstd, xbzrle, xbzrle+zstd.
    pub dec_s: [f64; 4],
    /// Seconds to memcpy the dirty pages.
    pub memcpy_s: f64,
    /// Thread CPU seconds (time on a CPU, not waiting for one) of FGBI encode, FGBI decode
    /// and the memcpy: the same measurements as `enc_s[0]`, `dec_s[0]` and `memcpy_s`, with a
    /// clock that other processes of a shared machine do not advance.
    pub cpu_s: [f64; 3],
    /// FGBI blocks sent as references.
    pub ref_blocks: u64,
    /// FGBI records by kind: zero, raw, ops, zstd ops.
    pub records: [u64; 4],
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.epochs += o.epochs;
        self.dirty_pages += o.dirty_pages;
        self.remus += o.remus;
        self.zstd += o.zstd;
        self.xbzrle += o.xbzrle;
        self.xbzrle_zstd += o.xbzrle_zstd;
        self.fgbi += o.fgbi;
        for i in 0..4 {
            self.enc_s[i] += o.enc_s[i];
            self.dec_s[i] += o.dec_s[i];
            self.records[i] += o.records[i];
        }
        self.memcpy_s += o.memcpy_s;
        for i in 0..3 {
            self.cpu_s[i] += o.cpu_s[i];
        }
        self.ref_blocks += o.ref_blocks;
    }

    fn pct(&self, x: u64) -> f64 {
        if self.remus == 0 {
            0.0
        } else {
            100.0 * x as f64 / self.remus as f64
        }
    }

    /// The best baseline (name, bytes).
    pub fn best_baseline(&self) -> (&'static str, u64) {
        [
            ("zstd", self.zstd),
            ("xbzrle", self.xbzrle),
            ("xbzrle+zstd", self.xbzrle_zstd),
        ]
        .into_iter()
        .min_by_key(|x| x.1)
        .unwrap_or(("zstd", self.zstd))
    }

    fn gbps(&self, secs: f64) -> f64 {
        if secs <= 0.0 {
            0.0
        } else {
            self.remus as f64 / secs / 1e9
        }
    }

    /// FGBI bytes / best baseline bytes.
    pub fn fgbi_vs_best(&self) -> f64 {
        let b = self.best_baseline().1;
        if b == 0 {
            0.0
        } else {
            self.fgbi as f64 / b as f64
        }
    }

    /// One human-readable line.
    pub fn line(&self, label: &str) -> String {
        let (bn, _) = self.best_baseline();
        let mut s = String::new();
        let _ = write!(
            s,
            "{label}: dirty {} pages | remus {} B | zstd {} B ({:.2}%) | xbzrle {} B ({:.2}%) | xbzrle+zstd {} B ({:.2}%) | fgbi {} B ({:.2}%) = {:.1}% of best baseline ({bn})",
            self.dirty_pages,
            self.remus,
            self.zstd,
            self.pct(self.zstd),
            self.xbzrle,
            self.pct(self.xbzrle),
            self.xbzrle_zstd,
            self.pct(self.xbzrle_zstd),
            self.fgbi,
            self.pct(self.fgbi),
            100.0 * self.fgbi_vs_best(),
        );
        let _ = write!(
            s,
            " | encode GB/s fgbi {:.2} zstd {:.2} xbzrle {:.2} xbzrle+zstd {:.2} | decode GB/s fgbi {:.2} zstd {:.2} xbzrle {:.2} xbzrle+zstd {:.2} | memcpy {:.2} GB/s | fgbi enc/memcpy {:.1}% | thread CPU time: fgbi encode {:.2} GB/s, decode {:.2} GB/s, memcpy {:.2} GB/s, enc/memcpy {:.1}% | refs {} blocks, records zero/raw/ops/zops {}/{}/{}/{}",
            self.gbps(self.enc_s[0]),
            self.gbps(self.enc_s[1]),
            self.gbps(self.enc_s[2]),
            self.gbps(self.enc_s[3]),
            self.gbps(self.dec_s[0]),
            self.gbps(self.dec_s[1]),
            self.gbps(self.dec_s[2]),
            self.gbps(self.dec_s[3]),
            self.gbps(self.memcpy_s),
            if self.enc_s[0] > 0.0 { 100.0 * self.memcpy_s / self.enc_s[0] } else { 0.0 },
            self.gbps(self.cpu_s[0]),
            self.gbps(self.cpu_s[1]),
            self.gbps(self.cpu_s[2]),
            if self.cpu_s[0] > 0.0 { 100.0 * self.cpu_s[2] / self.cpu_s[0] } else { 0.0 },
            self.ref_blocks,
            self.records[0],
            self.records[1],
            self.records[2],
            self.records[3],
        );
        s
    }

    /// A JSON object with the figures.
    pub fn json(&self) -> String {
        let (bn, bb) = self.best_baseline();
        format!(
            "{{\"epochs\":{},\"dirty_pages\":{},\"remus_bytes\":{},\"zstd_bytes\":{},\"xbzrle_bytes\":{},\"xbzrle_zstd_bytes\":{},\"fgbi_bytes\":{},\"zstd_pct_remus\":{:.3},\"xbzrle_pct_remus\":{:.3},\"xbzrle_zstd_pct_remus\":{:.3},\"fgbi_pct_remus\":{:.3},\"best_baseline\":\"{bn}\",\"best_baseline_bytes\":{bb},\"fgbi_pct_best_baseline\":{:.3},\"encode_gbps\":{{\"fgbi\":{:.3},\"zstd\":{:.3},\"xbzrle\":{:.3},\"xbzrle_zstd\":{:.3}}},\"decode_gbps\":{{\"fgbi\":{:.3},\"zstd\":{:.3},\"xbzrle\":{:.3},\"xbzrle_zstd\":{:.3}}},\"memcpy_gbps\":{:.3},\"fgbi_encode_pct_memcpy\":{:.2},\"cpu_time\":{{\"fgbi_encode_gbps\":{:.3},\"fgbi_decode_gbps\":{:.3},\"memcpy_gbps\":{:.3},\"fgbi_encode_pct_memcpy\":{:.2}}},\"fgbi_ref_blocks\":{},\"fgbi_records\":{{\"zero\":{},\"raw\":{},\"ops\":{},\"zops\":{}}}}}",
            self.epochs,
            self.dirty_pages,
            self.remus,
            self.zstd,
            self.xbzrle,
            self.xbzrle_zstd,
            self.fgbi,
            self.pct(self.zstd),
            self.pct(self.xbzrle),
            self.pct(self.xbzrle_zstd),
            self.pct(self.fgbi),
            100.0 * self.fgbi_vs_best(),
            self.gbps(self.enc_s[0]),
            self.gbps(self.enc_s[1]),
            self.gbps(self.enc_s[2]),
            self.gbps(self.enc_s[3]),
            self.gbps(self.dec_s[0]),
            self.gbps(self.dec_s[1]),
            self.gbps(self.dec_s[2]),
            self.gbps(self.dec_s[3]),
            self.gbps(self.memcpy_s),
            if self.enc_s[0] > 0.0 { 100.0 * self.memcpy_s / self.enc_s[0] } else { 0.0 },
            self.gbps(self.cpu_s[0]),
            self.gbps(self.cpu_s[1]),
            self.gbps(self.cpu_s[2]),
            if self.cpu_s[0] > 0.0 { 100.0 * self.cpu_s[2] / self.cpu_s[0] } else { 0.0 },
            self.ref_blocks,
            self.records[0],
            self.records[1],
            self.records[2],
            self.records[3],
        )
    }
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per-epoch figures.
    pub epochs: Vec<Figures>,
    /// Epoch 0 (the full first image).
    pub first: Figures,
    /// Sum of epochs 1.. (steady state: dirty-page epochs).
    pub steady: Figures,
    /// Image size in bytes.
    pub image_bytes: usize,
    /// Encoder memory overhead at the end (bytes).
    pub encoder_overhead: usize,
    /// Store memory used at the end (bytes).
    pub store_used: usize,
}

/// CPU time of the calling thread in seconds (`CLOCK_THREAD_CPUTIME_ID`): advances only while
/// the thread runs, so it is not inflated when other processes of a shared machine take the
/// CPU during a timed stretch (the wall clock is, and more so for long stretches such as an
/// encode than for short ones such as the memcpy). Cache and memory contention still count.
pub fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Image files of `dir`, sorted by name (`.zst` files are decompressed when read, `.xor.zst`
/// files are XOR deltas against the previous image).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !n.starts_with('.')
                && !n.ends_with(".md")
                && !n.ends_with(".txt")
                && !n.ends_with(".json")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no images", dir.display()));
    }
    Ok(files)
}

/// Reads one image: raw, `.zst` (decompressed), or `.xor.zst` (a packed set from
/// `resilire-capture pack`: the XOR of this image with `prev`, zstd-compressed).
pub fn read_image_after(path: &Path, prev: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut img = if name.ends_with(".zst") {
        zstd::stream::decode_all(&raw[..]).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        raw
    };
    if name.ends_with(".xor.zst") {
        let prev =
            prev.ok_or_else(|| format!("{}: an XOR image needs a previous image", path.display()))?;
        if prev.len() != img.len() {
            return Err(format!(
                "{}: size differs from the previous image",
                path.display()
            ));
        }
        for (a, b) in img.iter_mut().zip(prev) {
            *a ^= b;
        }
    }
    Ok(img)
}

/// Reads one stand-alone image (raw or `.zst`).
pub fn read_image(path: &Path) -> Result<Vec<u8>, String> {
    read_image_after(path, None)
}

/// Runs the bench over `dir`; `out` receives each printed line (per epoch, then totals).
pub fn run(dir: &Path, opts: &Options, out: &mut dyn FnMut(&str)) -> Result<Report, String> {
    let files = image_files(dir)?;
    let files = &files[..files.len().min(opts.max_epochs)];
    let first = read_image(&files[0])?;
    let size = first.len();
    if size == 0 || size % PAGE_SIZE != 0 {
        return Err(format!(
            "{}: size {size} is not a multiple of 4096",
            files[0].display()
        ));
    }
    let pages = size / PAGE_SIZE;
    let cfg = EncoderConfig {
        block_size: opts.block_size,
        zstd_level: opts.fgbi_level.unwrap_or(opts.zstd_level),
        batch_len: opts.batch_len,
        patch: opts.patch,
        index_slots_log2: opts.index_log2,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, pages as u64).map_err(|e| e.to_string())?;
    let mut dec = Decoder::new(opts.block_size).map_err(|e| e.to_string())?;
    let mut store = Store::new(HeapFrames::new(), 2 * size + (64 << 20));
    const VM: u64 = 1;
    store
        .add_image(VM, pages as u64)
        .map_err(|e| e.to_string())?;
    let mut cctx = zstd::bulk::Compressor::new(opts.zstd_level).map_err(|e| e.to_string())?;
    let mut dctx = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;

    let mut prev = vec![0u8; size];
    // Output buffers are reused across epochs and pre-faulted, for every method alike, so
    // that timings measure the codecs rather than page faults of fresh allocations.
    let prefault = |n: usize| -> Vec<u8> {
        let mut v = vec![1u8; n];
        v.clear();
        v
    };
    let mut arena = prefault(size / 2);
    let mut bounds: Vec<usize> = Vec::new();
    let mut buf = prefault(size);
    let mut gathered = prefault(size);
    let mut z = prefault(zstd::zstd_safe::compress_bound(size));
    let mut xb = prefault(size + size / 8);
    let mut xz = prefault(zstd::zstd_safe::compress_bound(size + size / 8));
    let mut back = prefault(size + size / 8);
    let mut report = Report {
        image_bytes: size,
        ..Report::default()
    };
    let mut cur = first;
    for (e, file) in files.iter().enumerate() {
        if e > 0 {
            cur = read_image_after(file, Some(&prev))?;
        }
        if cur.len() != size {
            return Err(format!(
                "{}: size {} differs from {size}",
                file.display(),
                cur.len()
            ));
        }
        let dirty: Vec<usize> = if e == 0 {
            (0..pages).collect()
        } else {
            (0..pages)
                .filter(|&p| {
                    cur[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]
                        != prev[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]
                })
                .collect()
        };
        let mut f = Figures {
            epochs: 1,
            dirty_pages: dirty.len() as u64,
            remus: (dirty.len() * PAGE_SIZE) as u64,
            ..Figures::default()
        };

        // memcpy of the dirty pages.
        buf.clear();
        let c = thread_cpu();
        let t = Instant::now();
        for &p in &dirty {
            buf.extend_from_slice(&cur[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
        }
        black_box(&buf);
        f.memcpy_s = t.elapsed().as_secs_f64();
        f.cpu_s[2] = thread_cpu() - c;

        // Baseline 1: zstd of the dirty pages (gathered, as Remus would copy them).
        gathered.clear();
        z.clear();
        let t = Instant::now();
        for &p in &dirty {
            gathered.extend_from_slice(&cur[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
        }
        cctx.compress_to_buffer(&gathered[..], &mut z)
            .map_err(|e| e.to_string())?;
        f.enc_s[1] = t.elapsed().as_secs_f64();
        f.zstd = z.len() as u64;
        back.clear();
        let t = Instant::now();
        dctx.decompress_to_buffer(&z[..], &mut back)
            .map_err(|e| e.to_string())?;
        f.dec_s[1] = t.elapsed().as_secs_f64();
        if back != gathered {
            return Err(format!("epoch {e}: zstd baseline round trip failed"));
        }

        // Baseline 2: XBZRLE-style delta against the previous version.
        xb.clear();
        let t = Instant::now();
        let mut tmp = Vec::with_capacity(2 * PAGE_SIZE);
        for &p in &dirty {
            let (o, n) = (
                &prev[p * PAGE_SIZE..(p + 1) * PAGE_SIZE],
                &cur[p * PAGE_SIZE..(p + 1) * PAGE_SIZE],
            );
            tmp.clear();
            zrle::encode_xor(o, n, &mut tmp);
            if tmp.len() >= PAGE_SIZE {
                resilire_codec::varint::put(&mut xb, 0);
                xb.extend_from_slice(n);
            } else {
                resilire_codec::varint::put(&mut xb, tmp.len() as u64);
                xb.extend_from_slice(&tmp);
            }
        }
        f.enc_s[2] = t.elapsed().as_secs_f64();
        f.xbzrle = xb.len() as u64;
        let t = Instant::now();
        let mut rebuilt = prev.clone();
        let dec_xb = |rebuilt: &mut Vec<u8>, xb: &[u8]| -> Result<(), String> {
            let mut c = Cursor::new(xb);
            for &p in &dirty {
                let page = &mut rebuilt[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
                let len = c.varint().map_err(|_| "xbzrle decode")?;
                if len == 0 {
                    page.copy_from_slice(c.take(PAGE_SIZE).map_err(|_| "xbzrle decode")?);
                } else {
                    let mut d = Cursor::new(c.take(len as usize).map_err(|_| "xbzrle decode")?);
                    zrle::apply_xor(&mut d, page).map_err(|_| "xbzrle decode")?;
                }
            }
            Ok(())
        };
        // The copy of `prev` is the receiver's existing image: not part of decoding.
        let t_copy = t.elapsed().as_secs_f64();
        let t = Instant::now();
        dec_xb(&mut rebuilt, &xb)?;
        f.dec_s[2] = t.elapsed().as_secs_f64();
        let _ = t_copy;
        if rebuilt != cur {
            return Err(format!("epoch {e}: xbzrle baseline round trip failed"));
        }

        // Baseline 3: XBZRLE + zstd.
        xz.clear();
        let t = Instant::now();
        cctx.compress_to_buffer(&xb[..], &mut xz)
            .map_err(|e| e.to_string())?;
        f.enc_s[3] = f.enc_s[2] + t.elapsed().as_secs_f64();
        f.xbzrle_zstd = xz.len() as u64;
        let mut rebuilt = prev.clone();
        back.clear();
        let t = Instant::now();
        dctx.decompress_to_buffer(&xz[..], &mut back)
            .map_err(|e| e.to_string())?;
        dec_xb(&mut rebuilt, &back)?;
        f.dec_s[3] = t.elapsed().as_secs_f64();
        if rebuilt != cur {
            return Err(format!("epoch {e}: xbzrle+zstd baseline round trip failed"));
        }
        drop(rebuilt);

        // FGBI: encode.
        // Chunks go to a reused arena (as a sender would hand them to the socket), so that the
        // timing does not include fresh allocations.
        arena.clear();
        bounds.clear();
        let c = thread_cpu();
        let t = Instant::now();
        enc.encode_epoch(&cur, dirty.iter().map(|&p| p as u64), &mut |c| {
            arena.extend_from_slice(c);
            bounds.push(arena.len());
        });
        f.enc_s[0] = t.elapsed().as_secs_f64();
        f.cpu_s[0] = thread_cpu() - c;
        let st = enc.take_stats();
        f.fgbi = arena.len() as u64;
        let chunks: Vec<&[u8]> = bounds
            .iter()
            .scan(0usize, |start, &end| {
                let c = &arena[*start..end];
                *start = end;
                Some(c)
            })
            .collect();
        f.ref_blocks = st.blocks_ref;
        f.records = [st.zero_pages, st.raw_pages, st.ops_pages, st.zops_pages];

        // FGBI: decode into the store's staging, commit.
        let c = thread_cpu();
        let t = Instant::now();
        for c in &chunks {
            let mut staging = store.staging(VM).map_err(|e| e.to_string())?;
            if let Err(err) = dec.apply_chunk(&mut staging, c) {
                return Err(format!("epoch {e}: FGBI decode failed: {err}"));
            }
        }
        store.commit(VM, e as u64).map_err(|e| e.to_string())?;
        f.dec_s[0] = t.elapsed().as_secs_f64();
        f.cpu_s[1] = thread_cpu() - c;
        enc.commit_epoch();

        // Check the committed image byte for byte.
        let mut page = [0u8; PAGE_SIZE];
        for p in 0..pages {
            store
                .read_page(VM, p as u64, &mut page)
                .map_err(|e| e.to_string())?;
            if page[..] != cur[p * PAGE_SIZE..(p + 1) * PAGE_SIZE] {
                return Err(format!(
                    "epoch {e} ({}): FGBI decoded page {p} differs from the input",
                    file.display()
                ));
            }
        }

        out(&f.line(&format!(
            "epoch {e}{}",
            if e == 0 { " (full first image)" } else { "" }
        )));
        if e == 0 {
            report.first = f;
        } else {
            report.steady.add(&f);
        }
        report.epochs.push(f);
        prev = cur.clone();
    }
    report.encoder_overhead = enc.memory_overhead().total();
    report.store_used = store.memory_used();
    out(&report.first.line("first epoch (full image)"));
    if report.steady.epochs > 0 {
        out(&report.steady.line(&format!(
            "steady-state total ({} dirty-page epochs)",
            report.steady.epochs
        )));
    }
    let mo = enc.memory_overhead();
    out(&format!(
        "image {} B ({} pages), block size {}, zstd level {} | encoder overhead: shadow {} B, index {} B, undo {} B, scratch {} B | store: {} B used of {} B budget, {:?}",
        size,
        pages,
        opts.block_size,
        opts.zstd_level,
        mo.shadow,
        mo.index,
        mo.undo,
        mo.scratch,
        store.memory_used(),
        store.budget(),
        store.stats()
    ));
    out(&format!(
        "{{\"image_bytes\":{size},\"block_size\":{},\"zstd_level\":{},\"first\":{},\"steady\":{},\"encoder_overhead_bytes\":{},\"store_used_bytes\":{}}}",
        opts.block_size,
        opts.zstd_level,
        report.first.json(),
        report.steady.json(),
        report.encoder_overhead,
        report.store_used
    ));
    Ok(report)
}
