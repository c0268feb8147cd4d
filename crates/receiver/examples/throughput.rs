//! Receive-and-commit throughput of the receiver, relative to a plain memcpy of the same bytes
//! measured in the same run.
//!
//! `cargo run --release -p resilire-receiver --example throughput -- [image-MiB] [epochs] [dirty-%]`
//! (defaults 64 MiB, 20 epochs, 5% of the pages dirtied per epoch).
//!
//! A primary (resilire-proto session + FGBI std encoder) first streams a realistic epoch sequence
//! to a receiver live, recording its byte stream. The recording is then replayed into a fresh
//! receiver with the same local material (so the same keys) in 64 KiB reads, as TCP would hand
//! them over, and timed: decryption, decoding into the staging area, commits and ACKs.

use resilire_codec::{Encoder, EncoderConfig, PAGE_SIZE};
use resilire_proto::*;
use resilire_receiver::*;
use resilire_store::{HeapFrames, Store};
use std::hint::black_box;
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A first image: a third random (high-entropy heap/page cache), a third structured (text,
/// tables with small integers), a third zero.
fn initial(pages: usize, rng: &mut Rng) -> Vec<u8> {
    let mut img = vec![0u8; pages * PAGE_SIZE];
    for p in 0..pages {
        let s = p * PAGE_SIZE;
        match p % 3 {
            0 => rng.fill(&mut img[s..s + PAGE_SIZE]),
            1 => {
                for i in 0..PAGE_SIZE / 8 {
                    let v = (p as u64) << 20 | (i as u64 * 17) & 0xffff;
                    img[s + i * 8..s + i * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {}
        }
    }
    img
}

/// Dirties `n` pages the way a running guest does: mostly small writes and counters, some
/// rewritten buffers, pages copied or freed (zeroed).
fn mutate(img: &mut [u8], rng: &mut Rng, n: usize) {
    let pages = img.len() / PAGE_SIZE;
    for _ in 0..n {
        let s = rng.below(pages as u64) as usize * PAGE_SIZE;
        match rng.below(10) {
            0..=3 => {
                for _ in 0..1 + rng.below(16) {
                    let o = rng.below(PAGE_SIZE as u64 / 8) as usize * 8;
                    let v = u64::from_le_bytes(img[s + o..s + o + 8].try_into().unwrap())
                        .wrapping_add(1);
                    img[s + o..s + o + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            4 | 5 => {
                let o = rng.below(PAGE_SIZE as u64 - 512) as usize;
                let n = 256 + rng.below(256) as usize;
                rng.fill(&mut img[s + o..s + o + n]);
            }
            6 => rng.fill(&mut img[s..s + PAGE_SIZE]),
            7 => img[s..s + PAGE_SIZE].fill(0),
            _ => {
                let q = rng.below(pages as u64) as usize * PAGE_SIZE;
                let src = img[q..q + PAGE_SIZE].to_vec();
                img[s..s + PAGE_SIZE].copy_from_slice(&src);
            }
        }
    }
}

const NAME: &str = "bench";
const KEY: [u8; 32] = [0x42; 32];
const MATERIAL: [u8; 32] = [0x17; 32];
const READ: usize = 64 * 1024;

fn receiver(budget: usize) -> Receiver<HeapFrames> {
    let keys = [VmKey {
        name: NAME.into(),
        key: KEY,
    }];
    Receiver::new(
        Store::new(HeapFrames::new(), budget),
        &keys,
        ReceiverConfig::default(),
    )
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(64);
    let epochs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let dirty_pct: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let pages = mib * 256;
    let budget = (3 * mib) << 20;
    let vm = vm_id_of(NAME);

    // 1. Record a live stream.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut img = initial(pages, &mut rng);
    let mut enc = Encoder::new(EncoderConfig::default(), pages as u64).unwrap();
    let mut rx = receiver(budget);
    let conn = rx.accept_with_material(0, MATERIAL);
    let mut s = Session::primary(vm, Key(KEY), [0x33; 32]);
    let xl = format!("name = \"{NAME}\"\nmemory = {mib}\n");
    let hello = Hello {
        vm_uuid: [1; 16],
        name: NAME,
        mem_pages: pages as u64,
        block_size: 64,
        group_id: 0,
        features: 0,
        codec_id: 1,
        codec_params: &[],
        xl_config: &xl,
    };
    let mut stream = s.seal(&Message::Hello(hello)).unwrap();
    let mut out = Vec::new();
    rx.on_bytes(conn, &stream, 0, &mut out).unwrap();
    s.feed(&out);
    assert!(matches!(s.poll().unwrap(), Some(Message::Welcome(_))));
    let hb = s
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 0 }))
        .unwrap();
    stream.extend_from_slice(&hb);
    out.clear();
    rx.on_bytes(conn, &hb, 0, &mut out).unwrap();
    s.feed(&out);
    s.poll().unwrap();
    let mut epoch_start = Vec::new();
    let mut dirty_bytes = Vec::new();
    for e in 1..=epochs as u64 {
        let dirty: Vec<u64> = if e == 1 {
            (0..pages as u64).collect()
        } else {
            let before = img.clone();
            mutate(
                &mut img,
                &mut rng,
                (pages as f64 * dirty_pct / 100.0) as usize,
            );
            (0..pages as u64)
                .filter(|&p| {
                    let a = p as usize * PAGE_SIZE;
                    before[a..a + PAGE_SIZE] != img[a..a + PAGE_SIZE]
                })
                .collect()
        };
        dirty_bytes.push(dirty.len() * PAGE_SIZE);
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        enc.take_stats();
        enc.encode_epoch(&img, dirty, &mut |c| chunks.push(c.to_vec()));
        let st = enc.take_stats();
        let mut frames = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.seal_into(
                &Message::Epoch(EpochData {
                    epoch: e,
                    chunk_index: i as u32,
                    data: c,
                }),
                &mut frames,
            )
            .unwrap();
        }
        let records = st.zero_pages + st.raw_pages + st.ops_pages + st.zops_pages;
        let commit = Commit {
            epoch: e,
            chunks: chunks.len() as u32,
            pages: records,
            digest: [0; 32],
        };
        s.seal_into(&Message::Commit(commit), &mut frames).unwrap();
        out.clear();
        rx.on_bytes(conn, &frames, e, &mut out).unwrap();
        s.feed(&out);
        assert!(matches!(s.poll().unwrap(), Some(Message::Ack(a)) if a.epoch == e));
        enc.commit_epoch();
        epoch_start.push(stream.len());
        stream.extend_from_slice(&frames);
    }
    drop(rx);
    let first_end = epoch_start.get(1).copied().unwrap_or(stream.len());
    let inc_bytes = stream.len() - first_end;

    // 2. Replay it, timed, a few times; keep the best run.
    let runs = 3;
    let mut best_total = f64::MAX;
    let mut best_inc = f64::MAX;
    for _ in 0..runs {
        let mut rx = receiver(budget);
        let conn = rx.accept_with_material(0, MATERIAL);
        let mut out = Vec::with_capacity(1 << 16);
        let t0 = Instant::now();
        let mut t_first = None;
        let mut off = 0;
        while off < stream.len() {
            let end = (off + READ).min(stream.len());
            if t_first.is_none() && end > first_end {
                // Split the read at the end of the first (full) epoch.
                let end = first_end;
                if end > off {
                    rx.on_bytes(conn, &stream[off..end], 1, &mut out).unwrap();
                }
                t_first = Some(t0.elapsed().as_secs_f64());
                off = end;
                continue;
            }
            rx.on_bytes(conn, &stream[off..end], 1, &mut out).unwrap();
            out.clear();
            off = end;
        }
        let total = t0.elapsed().as_secs_f64();
        let st = rx.vm_status(vm).unwrap();
        assert_eq!(st.committed_epoch, Some(epochs as u64));
        let mut page = [0u8; PAGE_SIZE];
        for p in (0..pages).step_by(97) {
            rx.read_page(vm, p as u64, &mut page).unwrap();
            assert_eq!(
                &page[..],
                &img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE],
                "pfn {p}"
            );
        }
        best_total = best_total.min(total);
        best_inc = best_inc.min(total - t_first.unwrap_or(total));
    }

    // 2b. The protocol layer alone (authenticate + decrypt + parse), same pieces.
    let mut best_proto = f64::MAX;
    for _ in 0..runs {
        let mut keys = std::collections::BTreeMap::new();
        keys.insert(vm, Key(KEY));
        let mut a = Session::appliance(keys, MATERIAL);
        let t0 = Instant::now();
        let mut n = 0usize;
        for piece in stream.chunks(READ) {
            a.feed(piece);
            while let Some(m) = a.poll().unwrap() {
                n += black_box(&m).kind() as usize;
            }
        }
        black_box(n);
        best_proto = best_proto.min(t0.elapsed().as_secs_f64());
    }

    // 3. memcpy of the same bytes in the same pieces, best of several runs.
    let mut dst = vec![0u8; READ];
    let mut best_copy = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for piece in stream.chunks(READ) {
            dst[..piece.len()].copy_from_slice(black_box(piece));
            black_box(&mut dst);
        }
        best_copy = best_copy.min(t0.elapsed().as_secs_f64());
    }

    let mb = |b: usize| b as f64 / 1e6;
    let total_mb = mb(stream.len());
    let copy_rate = total_mb / best_copy;
    let rx_rate = total_mb / best_total;
    let inc_rate = mb(inc_bytes) / best_inc;
    let inc_dirty: usize = dirty_bytes.iter().skip(1).sum();
    println!(
        "image {mib} MiB, {epochs} epochs ({dirty_pct}% pages dirtied per epoch after the first, full one)"
    );
    println!(
        "wire stream {:.1} MB (first epoch {:.1} MB, incremental {:.1} MB for {:.1} MB of dirty pages)",
        total_mb,
        mb(first_end),
        mb(inc_bytes),
        mb(inc_dirty)
    );
    println!(
        "receive+commit, all epochs:     {:>9.1} MB/s of wire bytes ({:.3} s)",
        rx_rate, best_total
    );
    println!(
        "receive+commit, incremental:    {:>9.1} MB/s of wire bytes = {:.1} MB/s of dirty pages",
        inc_rate,
        mb(inc_dirty) / best_inc
    );
    println!(
        "protocol layer alone:           {:>9.1} MB/s (authenticate, decrypt, parse)",
        total_mb / best_proto
    );
    println!("memcpy of the same bytes:       {:>9.1} MB/s", copy_rate);
    println!(
        "ratio receive/memcpy:           all {:.4}, incremental {:.4}",
        rx_rate / copy_rate,
        inc_rate / copy_rate
    );
    println!(
        "{{\"image_mib\":{mib},\"epochs\":{epochs},\"wire_mb\":{total_mb:.2},\"rx_mbps\":{rx_rate:.1},\"rx_incremental_mbps\":{inc_rate:.1},\"memcpy_mbps\":{copy_rate:.1},\"ratio\":{:.4}}}",
        rx_rate / copy_rate
    );
}
