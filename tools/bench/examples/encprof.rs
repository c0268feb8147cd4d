//! Profiling aid: replays the images of `<dir>` through the FGBI encoder only (no decoder, no
//! baselines) `reps` times, and prints steady-state encode throughput, memcpy throughput of the
//! same dirty pages, and output bytes. `cargo run --release --example encprof -- <dir> [reps] [max images]`.
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
        let (mut te, mut tc, mut tcpu) = (0.0, 0.0, 0.0);
        out = 0;
        for (e, d) in dirty.iter().enumerate() {
            let img = &imgs[e + 1];
            let t = Instant::now();
            for (i, &p) in d.iter().enumerate() {
                buf[i * PAGE_SIZE..][..PAGE_SIZE]
                    .copy_from_slice(&img[p as usize * PAGE_SIZE..][..PAGE_SIZE]);
            }
            std::hint::black_box(&buf);
            tc += t.elapsed().as_secs_f64();
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
        enc_best = enc_best.min(te);
        cpu_best = cpu_best.min(tcpu);
        cpy_best = cpy_best.min(tc);
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
}

/// CPU time of this thread in ns (Linux schedstat: time on CPU, not waiting for one; the
/// machine is shared, so wall-clock figures swing with other load), 0 elsewhere.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// One timed steady-state epoch (a separate function so that callgrind can count it alone:
/// `valgrind --tool=callgrind --toggle-collect='*steady_epoch*'`).
#[inline(never)]
fn steady_epoch(enc: &mut Encoder, img: &[u8], d: &[u64], arena: &mut Vec<u8>) {
    enc.encode_epoch(img, d.iter().copied(), &mut |c| arena.extend_from_slice(c));
}
