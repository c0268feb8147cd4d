//! Profiling aid: replays the images of `<dir>` through the FGBI encoder only (no decoder, no
//! baselines) `reps` times, and prints steady-state encode throughput, memcpy throughput of the
//! same dirty pages, and output bytes. `cargo run --release --example encprof -- <dir> [reps] [max images]`.
//! With `ENCPROF_DUMP=<outdir>` the control and literal bytes of the steady epochs' split
//! batches (before zstd) go to `<outdir>/ctl.raw` and `<outdir>/lit.raw`, for
//! bounds with other compressors (`tools/bench/scripts/bounds.sh`).
use resilire_codec::{Encoder, EncoderConfig, PAGE_SIZE};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let max: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let inner: usize = std::env::var("ENCPROF_INNER")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let files = resilire_bench::image_files(dir).unwrap();
    let files = &files[..files.len().min(max)];
    let mut imgs: Vec<Vec<u8>> = Vec::new();
    for f in files {
        let img = resilire_bench::read_image_after(f, imgs.last().map(|v| &v[..])).unwrap();
        imgs.push(img);
    }
    let pages = imgs[0].len() / PAGE_SIZE;
    let dirty: Vec<Vec<u64>> = (1..imgs.len())
        .map(|e| {
            (0..pages)
                .filter(|&p| {
                    imgs[e - 1][p * PAGE_SIZE..][..PAGE_SIZE]
                        != imgs[e][p * PAGE_SIZE..][..PAGE_SIZE]
                })
                .map(|p| p as u64)
                .collect()
        })
        .collect();
    let dirty_bytes: usize = dirty.iter().map(|d| d.len() * PAGE_SIZE).sum();
    let mut buf = vec![1u8; dirty.iter().map(|d| d.len()).max().unwrap_or(0) * PAGE_SIZE];
    let mut arena: Vec<u8> = vec![1u8; imgs[0].len()];
    let (mut enc_best, mut cpy_best, mut cpu_best, mut out) =
        (f64::MAX, f64::MAX, f64::MAX, 0usize);
    let mut stats = resilire_codec::EncodeStats::default();
    let mut cpy_cpu_best = f64::MAX;
    for _ in 0..reps {
        let mut cfg = EncoderConfig::default();
        if let Some(l) = std::env::var("ENCPROF_LEVEL")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            cfg.zstd_level = l;
        }
        if let Some(l) = std::env::var("ENCPROF_BATCH")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            cfg.batch_len = l;
        }
        let mut enc = Encoder::new(cfg, pages as u64).unwrap();
        enc.encode_epoch(&imgs[0], 0..pages as u64, &mut |_| {});
        enc.commit_epoch();
        enc.take_stats();
        let (mut te, mut tc, mut tcpu, mut tccpu) = (0.0, 0.0, 0.0, 0.0);
        out = 0;
        for (e, d) in dirty.iter().enumerate() {
            let img = &imgs[e + 1];
            let c0 = cpu_ns();
            let t = Instant::now();
            for (i, &p) in d.iter().enumerate() {
                buf[i * PAGE_SIZE..][..PAGE_SIZE]
                    .copy_from_slice(&img[p as usize * PAGE_SIZE..][..PAGE_SIZE]);
            }
            std::hint::black_box(&buf);
            tc += t.elapsed().as_secs_f64();
            tccpu += (cpu_ns() - c0) as f64 / 1e9;
            for _ in 0..inner {
                // Profiling only: the same epoch again, rolled back (ENCPROF_INNER).
                enc.encode_epoch(img, d.iter().copied(), &mut |c| {
                    std::hint::black_box(c.len());
                });
                enc.abort_epoch();
            }
            arena.clear();
            let c0 = cpu_ns();
            let t = Instant::now();
            steady_epoch(&mut enc, img, d, &mut arena);
            te += t.elapsed().as_secs_f64();
            tcpu += (cpu_ns() - c0) as f64 / 1e9;
            out += arena.len();
            enc.commit_epoch();
        }
        stats = enc.take_stats();
        enc_best = enc_best.min(te);
        cpu_best = cpu_best.min(tcpu);
        cpy_best = cpy_best.min(tc);
        cpy_cpu_best = cpy_cpu_best.min(tccpu);
    }
    println!(
        "steady: {} dirty B, fgbi {} B ({:.3}%), encode {:.3} GB/s, memcpy {:.3} GB/s, enc/memcpy {:.1}%, encode {:.3} GB/s of thread CPU time",
        dirty_bytes,
        out,
        100.0 * out as f64 / dirty_bytes as f64,
        dirty_bytes as f64 / enc_best / 1e9,
        dirty_bytes as f64 / cpy_best / 1e9,
        100.0 * cpy_best / enc_best,
        dirty_bytes as f64 / cpu_best / 1e9
    );
    println!(
        "streams: control {} B -> {} B zstd, literal {} B -> {} B zstd ({} batches, {} pages)",
        stats.ctl_raw, stats.ctl_z, stats.lit_raw, stats.lit_z, stats.batches, stats.pages_in
    );
    let batches = steady_streams(&imgs, &dirty);
    dump(&batches);
    // Where the time goes, in thread CPU time against the memcpy of the same pages: what a
    // 30%-of-memcpy encoder may spend, the shadow work every delta encoder does, and zstd of the
    // streams alone.
    let cpy_cpu = cpy_cpu_best;
    let floor = floor_seconds(&imgs, &dirty);
    let z = zstd_seconds(&batches, EncoderConfig::default().zstd_level);
    println!(
        "cpu time: memcpy {:.1} ms, budget at 30% of memcpy {:.1} ms | fgbi encode {:.1} ms = shadow floor {:.1} ms ({:.1}% of memcpy speed) + zstd of the streams {:.1} ms + the rest {:.1} ms",
        cpy_cpu * 1e3,
        cpy_cpu / 0.3 * 1e3,
        cpu_best * 1e3,
        floor * 1e3,
        100.0 * cpy_cpu / floor,
        z * 1e3,
        (cpu_best - floor - z) * 1e3
    );
}

/// The control and literal streams of every split batch of the steady epochs (an untimed pass).
fn steady_streams(imgs: &[Vec<u8>], dirty: &[Vec<u64>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut enc =
        Encoder::new(EncoderConfig::default(), (imgs[0].len() / PAGE_SIZE) as u64).unwrap();
    enc.encode_epoch(&imgs[0], 0..(imgs[0].len() / PAGE_SIZE) as u64, &mut |_| {});
    enc.commit_epoch();
    let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = batches.clone();
    enc.set_stream_tap(Some(Box::new(move |c: &[u8], l: &[u8]| {
        sink.lock().unwrap().push((c.to_vec(), l.to_vec()));
    })));
    for (e, d) in dirty.iter().enumerate() {
        enc.encode_epoch(&imgs[e + 1], d.iter().copied(), &mut |_| {});
        enc.commit_epoch();
    }
    enc.set_stream_tap(None);
    let v = std::mem::take(&mut *batches.lock().unwrap());
    v
}

/// Writes the split batches' streams to ENCPROF_DUMP, if set.
fn dump(batches: &[(Vec<u8>, Vec<u8>)]) {
    let Some(dir) = std::env::var_os("ENCPROF_DUMP").map(std::path::PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&dir).expect("ENCPROF_DUMP directory");
    let ctl: Vec<u8> = batches
        .iter()
        .flat_map(|(c, _)| c.iter().copied())
        .collect();
    let lit: Vec<u8> = batches
        .iter()
        .flat_map(|(_, l)| l.iter().copied())
        .collect();
    std::fs::write(dir.join("ctl.raw"), ctl).expect("writing ctl.raw");
    std::fs::write(dir.join("lit.raw"), lit).expect("writing lit.raw");
}

/// Seconds (best of 3) to zstd the split batches' streams alone, batch by batch, with the
/// encoder's settings.
fn zstd_seconds(batches: &[(Vec<u8>, Vec<u8>)], level: i32) -> f64 {
    let mut zc = resilire_codec::batch_compressor(level);
    let mut out = Vec::with_capacity(1 << 20);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let c0 = cpu_ns();
        for (c, l) in batches {
            for s in [c, l] {
                out.clear();
                zc.compress_to_buffer(s, &mut out).expect("zstd");
                std::hint::black_box(&out);
            }
        }
        best = best.min((cpu_ns() - c0) as f64 / 1e9);
    }
    best
}

/// Thread CPU seconds (best of 3) of the work no shadow-based delta encoder avoids: per dirty
/// page the byte mask against the shadow, then the changed 64-byte blocks into the undo log and
/// the shadow.
fn floor_seconds(imgs: &[Vec<u8>], dirty: &[Vec<u64>]) -> f64 {
    let mut best = f64::MAX;
    let mut mask = [0u64; PAGE_SIZE / 64];
    let mut undo: Vec<u8> = Vec::with_capacity(64 << 20);
    for _ in 0..3 {
        let mut shadow = imgs[0].clone();
        let mut t = 0.0;
        for (e, d) in dirty.iter().enumerate() {
            let img = &imgs[e + 1];
            undo.clear();
            let c0 = cpu_ns();
            for &p in d {
                let at = p as usize * PAGE_SIZE;
                let page = &img[at..at + PAGE_SIZE];
                resilire_codec::zrle::diff_mask(&shadow[at..at + PAGE_SIZE], page, &mut mask);
                for (b, &m) in mask.iter().enumerate() {
                    if m != 0 {
                        let r = at + b * 64..at + b * 64 + 64;
                        undo.extend_from_slice(&shadow[r.clone()]);
                        shadow[r].copy_from_slice(&page[b * 64..b * 64 + 64]);
                    }
                }
            }
            t += (cpu_ns() - c0) as f64 / 1e9;
            std::hint::black_box(&undo);
        }
        best = best.min(t);
    }
    best
}

/// CPU time of this thread in ns (`CLOCK_THREAD_CPUTIME_ID`, as the bench; schedstat, used
/// here before, advances only at scheduler ticks, 4 ms steps).
fn cpu_ns() -> u64 {
    (resilire_bench::thread_cpu() * 1e9) as u64
}

/// One timed steady-state epoch (a separate function so that callgrind can count it alone:
/// `valgrind --tool=callgrind --toggle-collect='*steady_epoch*'`).
#[inline(never)]
fn steady_epoch(enc: &mut Encoder, img: &[u8], d: &[u64], arena: &mut Vec<u8>) {
    enc.encode_epoch(img, d.iter().copied(), &mut |c| arena.extend_from_slice(c));
}
