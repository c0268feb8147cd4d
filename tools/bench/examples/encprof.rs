//! Profiling aid: encodes one steady-state epoch of `<dir>` repeatedly (encode, abort, again)
//! and prints the encode throughput. `cargo run --release --example encprof -- <dir> [reps]`.
use resilire_codec::{Encoder, EncoderConfig, PAGE_SIZE};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let files = resilire_bench::image_files(dir).unwrap();
    let a = resilire_bench::read_image(&files[0]).unwrap();
    let b = resilire_bench::read_image(&files[1]).unwrap();
    let c = resilire_bench::read_image(&files[2]).unwrap();
    let pages = a.len() / PAGE_SIZE;
    let mut enc = Encoder::new(EncoderConfig::default(), pages as u64).unwrap();
    enc.encode_epoch(&a, 0..pages as u64, &mut |_| {});
    enc.commit_epoch();
    let d1: Vec<u64> = (0..pages).filter(|&p| a[p * PAGE_SIZE..][..PAGE_SIZE] != b[p * PAGE_SIZE..][..PAGE_SIZE]).map(|p| p as u64).collect();
    enc.encode_epoch(&b, d1.iter().copied(), &mut |_| {});
    enc.commit_epoch();
    let d2: Vec<u64> = (0..pages).filter(|&p| b[p * PAGE_SIZE..][..PAGE_SIZE] != c[p * PAGE_SIZE..][..PAGE_SIZE]).map(|p| p as u64).collect();
    enc.take_stats();
    let mut out = 0usize;
    let mut best = f64::MAX;
    let t = Instant::now();
    for _ in 0..reps {
        let t1 = Instant::now();
        enc.encode_epoch(&c, d2.iter().copied(), &mut |ch| out += ch.len());
        best = best.min(t1.elapsed().as_secs_f64());
        enc.abort_epoch();
    }
    let s = t.elapsed().as_secs_f64();
    println!("best rep: encode {:.3} GB/s", (d2.len() * PAGE_SIZE) as f64 / best / 1e9);
    println!("{:?}", enc.take_stats());
    let bytes = (d2.len() * PAGE_SIZE * reps) as f64;
    println!("{} dirty pages, {} B out/epoch, encode {:.3} GB/s", d2.len(), out / reps, bytes / s / 1e9);
    // Raw (uncompressed) FGBI stream of the same epoch, to probe zstd's speed on it.
    let mut xb = Vec::new();
    for &p in &d2 {
        let p = p as usize;
        resilire_codec::zrle::encode_patch(&b[p * PAGE_SIZE..][..PAGE_SIZE], &c[p * PAGE_SIZE..][..PAGE_SIZE], &mut xb);
    }
    zstd_probe(&xb);
    let mut buf = vec![0u8; d2.len() * PAGE_SIZE];
    let mut best = f64::MAX;
    let t = Instant::now();
    for _ in 0..reps {
        let t1 = Instant::now();
        for (i, &p) in d2.iter().enumerate() {
            buf[i * PAGE_SIZE..][..PAGE_SIZE].copy_from_slice(&c[p as usize * PAGE_SIZE..][..PAGE_SIZE]);
        }
        std::hint::black_box(&buf);
        best = best.min(t1.elapsed().as_secs_f64());
    }
    println!("best rep: memcpy {:.3} GB/s", (d2.len() * PAGE_SIZE) as f64 / best / 1e9);
    println!("memcpy {:.3} GB/s", bytes / t.elapsed().as_secs_f64() / 1e9);
}

#[allow(dead_code)]
fn zstd_probe(data: &[u8]) {
    let mut c = zstd::bulk::Compressor::new(1).unwrap();
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(256 * 1024));
    let t = Instant::now();
    let mut total = 0;
    for _ in 0..10 {
        for piece in data.chunks(128 * 1024) {
            out.clear();
            total += c.compress_to_buffer(piece, &mut out).unwrap();
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!("zstd level 1 on {} B x10: {:.1} MB/s, ratio {:.3}", data.len(), data.len() as f64 * 10.0 / s / 1e6, total as f64 / 10.0 / data.len() as f64);
}
