//! Encode → decode reproduces any image sequence, at every block size.

use proptest::prelude::*;
use resilire_codec::{Decoder, Encoder, EncoderConfig, FlatImage, PAGE_SIZE};

const PAGES: usize = 6;

#[derive(Debug, Clone)]
enum Mutation {
    /// Write bytes at an offset.
    Write(usize, Vec<u8>),
    /// Copy `len` bytes from one offset to another (content that exists elsewhere).
    Copy(usize, usize, usize),
    /// Zero a page.
    ZeroPage(usize),
    /// Fill a page with a repeating byte.
    Fill(usize, u8),
    /// Overwrite a page with pseudo-random bytes.
    Noise(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let size = PAGES * PAGE_SIZE;
    prop_oneof![
        4 => (0..size, prop::collection::vec(any::<u8>(), 1..200))
            .prop_map(|(o, v)| Mutation::Write(o, v)),
        3 => (0..size, 0..size, 1..5000usize).prop_map(|(a, b, l)| Mutation::Copy(a, b, l)),
        1 => (0..PAGES).prop_map(Mutation::ZeroPage),
        1 => (0..PAGES, any::<u8>()).prop_map(|(p, b)| Mutation::Fill(p, b)),
        1 => (0..PAGES, any::<u64>()).prop_map(|(p, s)| Mutation::Noise(p, s)),
    ]
}

fn apply(img: &mut [u8], m: &Mutation) {
    let size = img.len();
    match m {
        Mutation::Write(o, v) => {
            let end = (o + v.len()).min(size);
            img[*o..end].copy_from_slice(&v[..end - o]);
        }
        Mutation::Copy(a, b, l) => {
            let l = (*l).min(size - a).min(size - b);
            img.copy_within(*a..a + l, *b);
        }
        Mutation::ZeroPage(p) => img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].fill(0),
        Mutation::Fill(p, b) => img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].fill(*b),
        Mutation::Noise(p, s) => {
            let mut x = *s | 1;
            for c in img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Knobs {
    small_index: bool,
    small_chunks: bool,
    batches: bool,
    patch: bool,
    split: bool,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, d, e)| Knobs {
            small_index: a,
            small_chunks: b,
            batches: c,
            patch: d,
            split: e,
        })
}

fn roundtrip(block_size: usize, epochs: &[Vec<Mutation>], k: Knobs) {
    let cfg = EncoderConfig {
        block_size,
        index_slots_log2: if k.small_index { Some(3) } else { None },
        // 0 is raised to the smallest legal value: many chunks.
        max_chunk_len: if k.small_chunks {
            0
        } else {
            resilire_codec::MAX_CHUNK_LEN
        },
        batch_len: if k.batches {
            EncoderConfig::default().batch_len
        } else {
            0
        },
        patch: k.patch,
        split: k.split,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, PAGES as u64).unwrap();
    let mut dec = Decoder::new(block_size).unwrap();
    let mut img = vec![0u8; PAGES * PAGE_SIZE];
    let mut backup = FlatImage::zeroed(PAGES);
    for muts in epochs {
        for m in muts {
            apply(&mut img, m);
        }
        let mut chunks = Vec::new();
        enc.encode_epoch(&img, 0..PAGES as u64, &mut |c| chunks.push(c.to_vec()));
        for c in &chunks {
            assert!(c.len() <= resilire_codec::MAX_CHUNK_LEN);
            dec.apply_chunk(&mut backup, c).unwrap();
        }
        enc.commit_epoch();
        assert!(
            backup.bytes == img,
            "decoded image differs at block size {block_size}"
        );
        assert!(enc.shadow() == &img[..]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn encode_decode_reproduces_images(
        epochs in prop::collection::vec(prop::collection::vec(mutation(), 0..12), 1..6),
        k in knobs(),
    ) {
        for shift in 5..=12 {
            roundtrip(1 << shift, &epochs, k);
        }
    }
}

/// The records of an epoch encoded without batches (inline ZERO_PAGE/RAW_PAGE/OPS records).
fn inline_records(block_size: usize, epochs: &[Vec<Mutation>]) -> Vec<Vec<u8>> {
    let cfg = EncoderConfig {
        block_size,
        batch_len: 0,
        zstd_level: -131072,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, PAGES as u64).unwrap();
    let mut img = vec![0u8; PAGES * PAGE_SIZE];
    let mut out = Vec::new();
    for muts in epochs {
        for m in muts {
            apply(&mut img, m);
        }
        enc.encode_epoch(&img, 0..PAGES as u64, &mut |c| out.push(c.to_vec()));
        enc.commit_epoch();
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn split_streams_merge_back(
        epochs in prop::collection::vec(prop::collection::vec(mutation(), 0..12), 1..4),
    ) {
        for shift in 5..=12 {
            let bs = 1 << shift;
            for recs in inline_records(bs, &epochs) {
                let (mut ctl, mut lit) = (Vec::new(), Vec::new());
                if resilire_codec::split::split(&recs, bs, &mut ctl, &mut lit).is_err() {
                    // Records the split does not cover (ZOPS): the encoder then keeps ZBATCH.
                    prop_assert!(recs.contains(&resilire_codec::tag::ZOPS));
                    continue;
                }
                prop_assert_eq!(ctl.len() + lit.len(), recs.len());
                let mut back = Vec::new();
                resilire_codec::split::merge(&ctl, &lit, bs, &mut back, recs.len()).unwrap();
                prop_assert_eq!(&back, &recs);
                // One byte less room, or a byte more or less of literals: refused, no panic.
                let mut b2 = Vec::new();
                if !recs.is_empty() {
                    prop_assert!(resilire_codec::split::merge(&ctl, &lit, bs, &mut b2, recs.len() - 1).is_err());
                }
                let mut lit2 = lit.clone();
                lit2.push(0);
                b2.clear();
                prop_assert!(resilire_codec::split::merge(&ctl, &lit2, bs, &mut b2, usize::MAX).is_err());
                if !lit.is_empty() {
                    b2.clear();
                    prop_assert!(resilire_codec::split::merge(&ctl, &lit[1..], bs, &mut b2, usize::MAX).is_err());
                }
            }
        }
    }

    #[test]
    fn merge_never_panics(ctl in prop::collection::vec(any::<u8>(), 0..300), lit in prop::collection::vec(any::<u8>(), 0..300), shift in 5..=12u32) {
        let mut out = Vec::new();
        let _ = resilire_codec::split::merge(&ctl, &lit, 1 << shift, &mut out, 1 << 18);
        prop_assert!(out.len() <= 1 << 18);
    }
}

#[test]
fn aborted_epoch_rolls_back_the_shadow() {
    let mut enc = Encoder::new(EncoderConfig::default(), 4).unwrap();
    let mut img = vec![7u8; 4 * PAGE_SIZE];
    enc.encode_epoch(&img, 0..4, &mut |_| {});
    enc.commit_epoch();
    img[100] = 1;
    img[3 * PAGE_SIZE] = 9;
    enc.encode_epoch(&img, 0..4, &mut |_| {});
    enc.abort_epoch();
    assert!(enc.shadow().iter().all(|&b| b == 7));
}

#[test]
fn stream_tap_sees_what_the_split_counters_count() {
    use std::sync::{Arc, Mutex};
    let pages = 64;
    let mut enc = Encoder::new(EncoderConfig::default(), pages).unwrap();
    let mut img = vec![0u8; pages as usize * PAGE_SIZE];
    for (i, b) in img.iter_mut().enumerate() {
        *b = (i % 251) as u8 ^ (i / 4096) as u8;
    }
    enc.encode_epoch(&img, 0..pages, &mut |_| {});
    enc.commit_epoch();
    enc.take_stats();
    let seen = Arc::new(Mutex::new((0usize, 0usize)));
    let sink = seen.clone();
    enc.set_stream_tap(Some(Box::new(move |c: &[u8], l: &[u8]| {
        let mut s = sink.lock().unwrap();
        s.0 += c.len();
        s.1 += l.len();
    })));
    // Small scattered changes: control bytes (positions) and literal bytes (new values).
    for p in 0..pages as usize {
        for k in 0..8 {
            img[p * PAGE_SIZE + k * 500 + p] = 0xa5 ^ k as u8;
        }
    }
    enc.encode_epoch(&img, 0..pages, &mut |_| {});
    let s = enc.take_stats();
    let (c, l) = *seen.lock().unwrap();
    assert!(s.batches > 0 && c > 0 && l > 0, "{s:?}");
    assert_eq!((s.ctl_raw, s.lit_raw), (c as u64, l as u64));
    assert!(s.ctl_z > 0 && s.ctl_z < s.ctl_raw && s.lit_z > 0, "{s:?}");
}

#[test]
fn duplicated_pages_go_as_references() {
    let mut enc = Encoder::new(EncoderConfig::default(), 8).unwrap();
    let mut img = vec![0u8; 8 * PAGE_SIZE];
    for (i, b) in img[..PAGE_SIZE].iter_mut().enumerate() {
        *b = (i * 7 + i / 13) as u8;
    }
    for p in 1..8 {
        img.copy_within(0..PAGE_SIZE, p * PAGE_SIZE);
    }
    let mut bytes = 0;
    enc.encode_epoch(&img, 0..8, &mut |c| bytes += c.len());
    let s = enc.take_stats();
    assert_eq!(s.blocks_ref, 7 * 64);
    // One page whole (or compressed), seven pages of a single reference run each.
    assert!(bytes < PAGE_SIZE + 7 * 8, "{bytes} bytes");
}

#[test]
fn decoder_rejects_garbage_without_panicking() {
    let mut dec = Decoder::new(64).unwrap();
    let mut img = FlatImage::zeroed(2);
    let mut x = 0x1234_5678_9abc_def1u64;
    for len in 0..2000 {
        let mut buf = vec![0u8; len % 300];
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8 % 8;
        }
        let _ = dec.apply_chunk(&mut img, &buf);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn zero_run_coding_round_trips(
        old in prop::collection::vec(any::<u8>(), 0..5000),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 1..12usize), 0..60),
    ) {
        let mut new = old.clone();
        for (at, b, len) in &edits {
            if new.is_empty() { break; }
            let s = at.index(new.len());
            let e = (s + len).min(new.len());
            new[s..e].fill(*b);
        }
        for xor in [false, true] {
            let mut out = Vec::new();
            if xor { resilire_codec::zrle::encode_xor(&old, &new, &mut out) } else { resilire_codec::zrle::encode_patch(&old, &new, &mut out) }
            let mut back = old.clone();
            let mut cur = resilire_codec::Cursor::new(&out);
            if xor { resilire_codec::zrle::apply_xor(&mut cur, &mut back).unwrap() } else { resilire_codec::zrle::apply_patch(&mut cur, &mut back).unwrap() }
            prop_assert!(cur.is_empty());
            prop_assert!(back == new);
        }
    }

    #[test]
    fn masked_zero_run_coding_equals_the_byte_coder(
        old in prop::collection::vec(any::<u8>(), 4096..=4096),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 1..12usize), 0..80),
        range in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        shared in any::<bool>(),
    ) {
        // Pages that mostly agree (shared) or differ everywhere except the edits.
        let mut new = if shared { old.clone() } else { old.iter().map(|b| b.wrapping_add(1)).collect() };
        for (at, b, len) in &edits {
            let s = at.index(new.len());
            let e = (s + len).min(new.len());
            if shared { new[s..e].fill(*b) } else { new[s..e].copy_from_slice(&old[s..e]) }
        }
        let mut m = [0u64; 64];
        resilire_codec::zrle::diff_mask(&old, &new, &mut m);
        for i in 0..4096 {
            prop_assert_eq!(m[i / 64] >> (i % 64) & 1 == 1, old[i] != new[i]);
        }
        let (a, b) = (range.0.index(4097), range.1.index(4097));
        let (s, e) = (a.min(b), a.max(b));
        for xor in [false, true] {
            let mut want = Vec::new();
            if xor { resilire_codec::zrle::encode_xor(&old[s..e], &new[s..e], &mut want) } else { resilire_codec::zrle::encode_patch(&old[s..e], &new[s..e], &mut want) }
            let mut got = Vec::new();
            resilire_codec::zrle::encode_masked(&old, &new, &m, s, e, &mut got, xor);
            prop_assert!(got == want, "range {}..{} xor {}", s, e, xor);
        }
    }
}

/// A chunk holding `records` as one ZBATCH, or as one ZSPLIT of the streams `ctl` and `lit`.
fn zframe(data: &[u8]) -> Vec<u8> {
    let f = zstd::bulk::compress(data, 1).unwrap();
    assert_eq!(f[..4], resilire_codec::ZSTD_MAGIC);
    f[4..].to_vec()
}

fn zbatch_chunk(records: &[u8]) -> Vec<u8> {
    let mut c = vec![resilire_codec::tag::ZBATCH];
    let f = zframe(records);
    resilire_codec::varint::put(&mut c, records.len() as u64);
    resilire_codec::varint::put(&mut c, f.len() as u64);
    c.extend_from_slice(&f);
    c
}

fn zsplit_chunk(ctl: &[u8], lit: &[u8]) -> Vec<u8> {
    let mut c = vec![resilire_codec::tag::ZSPLIT];
    resilire_codec::varint::put(&mut c, (ctl.len() + lit.len()) as u64);
    resilire_codec::varint::put(&mut c, ctl.len() as u64);
    for s in [ctl, lit] {
        let f = if s.is_empty() { Vec::new() } else { zframe(s) };
        resilire_codec::varint::put(&mut c, f.len() as u64);
        c.extend_from_slice(&f);
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The decoder applies a ZSPLIT straight from its two streams; that must accept exactly
    /// what merging the streams (split::merge) and applying the records as a ZBATCH accepts,
    /// with the same result, also for damaged streams.
    #[test]
    fn zsplit_decodes_as_the_merged_batch(
        epochs in prop::collection::vec(prop::collection::vec(mutation(), 0..12), 1..3),
        damage in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..3),
        shift in 5..=12u32,
    ) {
        let bs = 1usize << shift;
        for recs in inline_records(bs, &epochs) {
            let (mut ctl, mut lit) = (Vec::new(), Vec::new());
            if resilire_codec::split::split(&recs, bs, &mut ctl, &mut lit).is_err() || recs.len() > resilire_codec::MAX_BATCH_LEN {
                continue;
            }
            for (in_ctl, at, v, how) in &damage {
                let s = if *in_ctl { &mut ctl } else { &mut lit };
                if s.is_empty() {
                    continue;
                }
                let i = at.index(s.len());
                match how {
                    0 => s[i] = *v,
                    1 => { s.remove(i); }
                    _ => s.insert(i, *v),
                }
            }
            let mut merged = Vec::new();
            let merged_ok = resilire_codec::split::merge(&ctl, &lit, bs, &mut merged, resilire_codec::MAX_BATCH_LEN).is_ok();
            // Both decoders start from the same image: the state before these records is not
            // needed, any image will do.
            let mut a = FlatImage::zeroed(PAGES);
            let mut b = FlatImage::zeroed(PAGES);
            let ra = Decoder::new(bs).unwrap().apply_chunk(&mut a, &zsplit_chunk(&ctl, &lit));
            if merged_ok {
                let rb = Decoder::new(bs).unwrap().apply_chunk(&mut b, &zbatch_chunk(&merged));
                prop_assert_eq!(ra.is_ok(), rb.is_ok());
                if ra.is_ok() {
                    prop_assert!(a.bytes == b.bytes);
                }
            } else {
                prop_assert!(ra.is_err());
            }
        }
    }
}
