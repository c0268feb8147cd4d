//! Store tests: decode into staging, commit/abort, cuts at every byte, sharing, exhaustion,
//! cold compression and the page directory.

use resilire_codec::{Decoder, Encoder, EncoderConfig, PageTarget, PAGE_SIZE};
use resilire_store::{HeapFrames, PageLocation, Store, StoreError};

fn image_bytes(store: &mut Store<HeapFrames>, id: u64) -> Vec<u8> {
    let n = store.page_count(id).unwrap();
    let mut out = vec![0u8; n as usize * PAGE_SIZE];
    let mut page = [0u8; PAGE_SIZE];
    for p in 0..n {
        store.read_page(id, p, &mut page).unwrap();
        out[p as usize * PAGE_SIZE..][..PAGE_SIZE].copy_from_slice(&page);
    }
    out
}

fn pseudo(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sequence of small images with realistic-ish changes: text-like pages, counters, copies.
fn epochs(pages: usize, n: usize) -> Vec<Vec<u8>> {
    let mut img = vec![0u8; pages * PAGE_SIZE];
    for p in 0..pages / 2 {
        let words = b"alpha beta gamma delta epsilon zeta eta theta ";
        for (i, b) in img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]
            .iter_mut()
            .enumerate()
        {
            *b = words[(i * (p + 1)) % words.len()];
        }
    }
    let noise = pseudo(7, PAGE_SIZE);
    img[(pages - 1) * PAGE_SIZE..].copy_from_slice(&noise);
    let mut out = vec![img.clone()];
    for e in 1..n {
        for k in 0..5 {
            let off = (e * 977 + k * 4099) % (img.len() - 8);
            img[off..off + 8].copy_from_slice(&(e as u64 * 31 + k as u64).to_le_bytes());
        }
        // Copy a page to another place, zero another.
        let src = (e * 3) % pages;
        let dst = (e * 5 + 1) % pages;
        img.copy_within(src * PAGE_SIZE..(src + 1) * PAGE_SIZE, dst * PAGE_SIZE);
        let z = (e * 7 + 2) % pages;
        img[z * PAGE_SIZE..(z + 1) * PAGE_SIZE].fill(0);
        out.push(img.clone());
    }
    out
}

fn encode(enc: &mut Encoder, img: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let pages = img.len() / PAGE_SIZE;
    enc.encode_epoch(img, 0..pages as u64, &mut |c| chunks.push(c.to_vec()));
    chunks
}

#[test]
fn epochs_decode_into_store_and_commit() {
    let pages = 16;
    let mut store = Store::new(HeapFrames::new(), 8 << 20);
    store.add_image(1, pages as u64).unwrap();
    let mut enc = Encoder::new(EncoderConfig::default(), pages as u64).unwrap();
    let mut dec = Decoder::new(64).unwrap();
    for (e, img) in epochs(pages, 6).iter().enumerate() {
        for c in encode(&mut enc, img) {
            dec.apply_chunk(&mut store.staging(1).unwrap(), &c).unwrap();
        }
        store.commit(1, e as u64).unwrap();
        enc.commit_epoch();
        assert!(image_bytes(&mut store, 1) == *img);
        assert_eq!(store.committed_epoch(1).unwrap(), Some(e as u64));
    }
}

#[test]
fn cut_at_every_byte_then_abort_keeps_committed_image() {
    let pages = 12;
    let imgs = epochs(pages, 3);
    let cfg = EncoderConfig {
        max_chunk_len: 0,
        ..EncoderConfig::default()
    }; // many chunks
    let mut enc = Encoder::new(cfg, pages as u64).unwrap();
    let mut dec = Decoder::new(64).unwrap();
    let mut store = Store::new(HeapFrames::new(), 8 << 20);
    store.add_image(9, pages as u64).unwrap();
    for (e, img) in imgs.iter().enumerate() {
        let chunks = encode(&mut enc, img);
        let before = image_bytes(&mut store, 9);
        let stats_before = store.stats();
        let frames_before = store.allocator().in_use();
        let stream: Vec<(usize, usize)> = chunks
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| (0..c.len()).map(move |b| (ci, b)))
            .collect();
        // Every byte for the first two epochs, a dense sample afterwards.
        let step = if e < 2 { 1 } else { 7 };
        for &(ci, cut) in stream.iter().step_by(step) {
            for c in &chunks[..ci] {
                dec.apply_chunk(&mut store.staging(9).unwrap(), c).unwrap();
            }
            // The connection dies inside chunk `ci`: its prefix may even decode.
            let _ = dec.apply_chunk(&mut store.staging(9).unwrap(), &chunks[ci][..cut]);
            store.abort(9).unwrap();
            assert!(
                image_bytes(&mut store, 9) == before,
                "epoch {e} cut at chunk {ci} byte {cut}"
            );
            // Everything staged was released (tables may keep grown capacity, still charged).
            assert_eq!(store.stats(), stats_before);
            assert_eq!(store.allocator().in_use(), frames_before);
        }
        for c in &chunks {
            dec.apply_chunk(&mut store.staging(9).unwrap(), c).unwrap();
        }
        store.commit(9, e as u64).unwrap();
        enc.commit_epoch();
        assert!(image_bytes(&mut store, 9) == *img);
    }
}

#[test]
fn corrupted_chunks_never_damage_the_committed_image() {
    let pages = 8;
    let imgs = epochs(pages, 2);
    let mut enc = Encoder::new(EncoderConfig::default(), pages as u64).unwrap();
    let mut dec = Decoder::new(64).unwrap();
    let mut store = Store::new(HeapFrames::new(), 8 << 20);
    store.add_image(1, pages as u64).unwrap();
    for c in encode(&mut enc, &imgs[0]) {
        dec.apply_chunk(&mut store.staging(1).unwrap(), &c).unwrap();
    }
    store.commit(1, 0).unwrap();
    enc.commit_epoch();
    let chunks = encode(&mut enc, &imgs[1]);
    let good = image_bytes(&mut store, 1);
    for (i, flip) in (0..chunks[0].len()).zip(pseudo(3, chunks[0].len())) {
        let mut bad = chunks[0].clone();
        bad[i] ^= flip | 1;
        let _ = dec.apply_chunk(&mut store.staging(1).unwrap(), &bad);
        store.abort(1).unwrap();
        assert!(image_bytes(&mut store, 1) == good);
    }
}

#[test]
fn identical_pages_are_shared_within_and_across_images() {
    let mut store = Store::new(HeapFrames::new(), 1 << 20);
    store.add_image(1, 4).unwrap();
    store.add_image(2, 4).unwrap();
    let a = [0xabu8; PAGE_SIZE];
    let b = [0xcdu8; PAGE_SIZE];
    let base = store.memory_used();
    {
        let mut s = store.staging(1).unwrap();
        s.write_page(0, &a).unwrap();
        s.write_page(1, &a).unwrap();
        s.write_page(2, &b).unwrap();
    }
    store.commit(1, 1).unwrap();
    let after_one = store.memory_used();
    // Two distinct objects (plus table growth), not three.
    assert!(after_one - base < 3 * PAGE_SIZE);
    assert_eq!(store.stats().frames, 2);
    assert_eq!(store.stats().references, 3);
    {
        let mut s = store.staging(2).unwrap();
        s.write_page(3, &a).unwrap();
        s.write_page(0, &b).unwrap();
    }
    store.commit(2, 1).unwrap();
    // Sharing across images: no new frame, no new memory.
    assert_eq!(store.memory_used(), after_one);
    assert_eq!(store.stats().frames, 2);
    assert_eq!(store.stats().references, 5);
    // Overwriting drops references; the last one frees the frame.
    {
        let mut s = store.staging(1).unwrap();
        s.write_zero_page(2).unwrap();
    }
    store.commit(1, 2).unwrap();
    assert_eq!(store.stats().references, 4);
    store.remove_image(2).unwrap();
    assert_eq!(store.stats().frames, 1);
    assert!(store.memory_used() < after_one);
    let mut page = [0u8; PAGE_SIZE];
    store.read_page(1, 1, &mut page).unwrap();
    assert_eq!(page, a);
    let dir: Vec<_> = store.page_directory(1).unwrap().collect();
    assert!(matches!(dir[0], PageLocation::Frame(_)));
    assert_eq!(dir[0], dir[1]);
    assert_eq!(dir[2], PageLocation::Zero);
}

#[test]
fn exhaustion_refuses_and_leaves_contents_intact() {
    let pages = 64u64;
    // Room for the tables and a handful of frames only.
    let mut store = Store::new(HeapFrames::new(), 12 * PAGE_SIZE);
    store.add_image(1, pages).unwrap();
    let mut committed = vec![0u8; pages as usize * PAGE_SIZE];
    let mut n = 0;
    // Fill until refused, committing each page.
    loop {
        let page = pseudo(n + 1, PAGE_SIZE);
        let arr: [u8; PAGE_SIZE] = page.clone().try_into().unwrap();
        let used = store.memory_used();
        let r = store.staging(1).unwrap().write_page(n, &arr);
        match r {
            Ok(()) => {
                store.commit(1, n).unwrap();
                committed[n as usize * PAGE_SIZE..][..PAGE_SIZE].copy_from_slice(&page);
                n += 1;
                assert!(store.memory_used() <= store.budget());
            }
            Err(StoreError::OutOfMemory { .. }) => {
                assert_eq!(store.memory_used(), used, "refusal changed the accounting");
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(n > 0 && n < pages);
    store.abort(1).unwrap();
    assert!(image_bytes(&mut store, 1) == committed);
    // A whole epoch that runs out half way: decoder error, abort, image intact.
    let mut enc = Encoder::new(EncoderConfig::default(), pages).unwrap();
    let mut dec = Decoder::new(64).unwrap();
    let big: Vec<u8> = pseudo(99, pages as usize * PAGE_SIZE);
    let mut failed = false;
    enc.encode_epoch(&big, 0..pages, &mut |c| {
        if dec.apply_chunk(&mut store.staging(1).unwrap(), c).is_err() {
            failed = true;
        }
    });
    assert!(failed);
    store.abort(1).unwrap();
    assert!(image_bytes(&mut store, 1) == committed);
    // Shared pages still fit when new ones do not.
    let first: [u8; PAGE_SIZE] = committed[..PAGE_SIZE].try_into().unwrap();
    store
        .staging(1)
        .unwrap()
        .write_page(pages - 1, &first)
        .unwrap();
    store.commit(1, 100).unwrap();
    let mut page = [0u8; PAGE_SIZE];
    store.read_page(1, pages - 1, &mut page).unwrap();
    assert_eq!(page, first);
    // Too large an image is refused too.
    assert!(matches!(
        store.add_image(2, 1 << 30),
        Err(StoreError::OutOfMemory { .. })
    ));
}

#[test]
fn frame_pool_exhaustion_is_refused_too() {
    let mut store = Store::new(HeapFrames::with_limit(2), 1 << 20);
    store.add_image(1, 8).unwrap();
    let mut s = store.staging(1).unwrap();
    s.write_page(0, &[1u8; PAGE_SIZE]).unwrap();
    s.write_page(1, &[2u8; PAGE_SIZE]).unwrap();
    assert!(matches!(
        s.write_page(2, &[3u8; PAGE_SIZE]),
        Err(StoreError::OutOfMemory { .. })
    ));
    s.write_page(2, &[1u8; PAGE_SIZE]).unwrap();
    store.commit(1, 1).unwrap();
    assert_eq!(store.allocator().in_use(), 2);
}

#[test]
fn cold_pages_compress_and_read_back() {
    let pages = 16;
    let imgs = epochs(pages, 4);
    let mut enc = Encoder::new(EncoderConfig::default(), pages as u64).unwrap();
    let mut dec = Decoder::new(64).unwrap();
    let mut store = Store::new(HeapFrames::new(), 8 << 20);
    store.add_image(5, pages as u64).unwrap();
    for (e, img) in imgs.iter().enumerate() {
        for c in encode(&mut enc, img) {
            dec.apply_chunk(&mut store.staging(5).unwrap(), &c).unwrap();
        }
        store.commit(5, e as u64).unwrap();
        enc.commit_epoch();
    }
    let used = store.memory_used();
    let n = store.compress_cold(2, usize::MAX);
    assert!(n > 0);
    assert!(store.memory_used() < used);
    assert!(store
        .page_directory(5)
        .unwrap()
        .any(|l| l == PageLocation::Compressed));
    assert!(image_bytes(&mut store, 5) == *imgs.last().unwrap());
    // Decoding on top of compressed pages (references into them) still works.
    let next = {
        let mut i = imgs.last().unwrap().clone();
        i.copy_within(0..PAGE_SIZE, 3 * PAGE_SIZE);
        i[5] ^= 0xff;
        i
    };
    for c in encode(&mut enc, &next) {
        dec.apply_chunk(&mut store.staging(5).unwrap(), &c).unwrap();
    }
    store.commit(5, 9).unwrap();
    assert!(image_bytes(&mut store, 5) == next);
    store.materialize(5).unwrap();
    assert!(store
        .page_directory(5)
        .unwrap()
        .all(|l| l != PageLocation::Compressed));
    assert!(image_bytes(&mut store, 5) == next);
}

#[test]
fn group_commit_is_all_or_nothing() {
    let mut store = Store::new(HeapFrames::new(), 1 << 20);
    store.add_image(1, 2).unwrap();
    store.add_image(2, 2).unwrap();
    store
        .staging(1)
        .unwrap()
        .write_page(0, &[1u8; PAGE_SIZE])
        .unwrap();
    store
        .staging(2)
        .unwrap()
        .write_page(1, &[2u8; PAGE_SIZE])
        .unwrap();
    assert_eq!(
        store.commit_group(&[(1, 5), (3, 5)]),
        Err(StoreError::NoSuchImage(3))
    );
    let mut page = [0u8; PAGE_SIZE];
    store.read_page(1, 0, &mut page).unwrap();
    assert_eq!(page, [0u8; PAGE_SIZE]);
    store.commit_group(&[(1, 5), (2, 5)]).unwrap();
    store.read_page(1, 0, &mut page).unwrap();
    assert_eq!(page, [1u8; PAGE_SIZE]);
    store.read_page(2, 1, &mut page).unwrap();
    assert_eq!(page, [2u8; PAGE_SIZE]);
    assert_eq!(store.committed_epoch(2).unwrap(), Some(5));
}
