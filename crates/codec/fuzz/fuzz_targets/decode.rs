//! Fuzz target: arbitrary bytes as chunks for the FGBI decoder, applied to a flat image and to
//! the checkpoint store's staging area. Must never panic; after abort the store's committed
//! image must be unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resilire_codec::{Decoder, FlatImage, PageTarget, PAGE_SIZE};
use resilire_store::{HeapFrames, Store};

const PAGES: u64 = 8;

fuzz_target!(|data: &[u8]| {
    // Input: block-size selector, u16 length of the first chunk, the first chunk, the second
    // chunk (the rest). Seeds made by `cargo run -p resilire-codec --example fuzz_seeds`.
    let Some((&sel, rest)) = data.split_first() else { return };
    let block_size = 32usize << (sel % 8);
    let mut dec = Decoder::new(block_size).expect("block size");
    let (first_len, rest) = match rest {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (rest.len(), rest),
    };
    let (c1, c2) = rest.split_at(first_len.min(rest.len()));
    let chunks = [c1, c2];

    let mut flat = FlatImage::zeroed(PAGES as usize);
    for c in &chunks {
        if dec.apply_chunk(&mut flat, c).is_err() {
            break;
        }
    }

    let mut store = Store::new(HeapFrames::new(), 1 << 20);
    store.add_image(1, PAGES).unwrap();
    {
        let mut s = store.staging(1).unwrap();
        for p in 0..PAGES {
            let mut page = [0u8; PAGE_SIZE];
            page[..8].copy_from_slice(&p.to_le_bytes());
            s.write_page(p, &page).unwrap();
        }
    }
    store.commit(1, 0).unwrap();
    for c in &chunks {
        let mut s = store.staging(1).unwrap();
        if dec.apply_chunk(&mut s, c).is_err() {
            break;
        }
    }
    store.abort(1).unwrap();
    let mut page = [0u8; PAGE_SIZE];
    for p in 0..PAGES {
        store.read_page(1, p, &mut page).unwrap();
        assert_eq!(&page[..8], &p.to_le_bytes());
        assert!(page[8..].iter().all(|&b| b == 0));
    }
});
