//! Property test: several VMs sharing content, random epochs, random connection cuts. The store
//! always holds exactly the last committed image of each VM, and its accounting returns to the
//! same figures after an abort.

use proptest::prelude::*;
use resilire_codec::{Decoder, Encoder, EncoderConfig, PAGE_SIZE};
use resilire_store::{HeapFrames, Store};

const PAGES: usize = 8;

/// A write: (page, source page from a shared pool of contents, optional byte tweak).
type Write = (usize, usize, Option<(usize, u8)>);

#[derive(Debug, Clone)]
struct Epoch {
    vm: usize,
    writes: Vec<Write>,
    /// Cut the stream after this fraction (per mille) of its bytes and abort.
    cut: Option<u16>,
}

fn epoch() -> impl Strategy<Value = Epoch> {
    (
        0..3usize,
        prop::collection::vec(
            (
                0..PAGES,
                0..6usize,
                prop::option::of((0..PAGE_SIZE, any::<u8>())),
            ),
            1..10,
        ),
        prop::option::of(0..1000u16),
    )
        .prop_map(|(vm, writes, cut)| Epoch { vm, writes, cut })
}

fn pool(i: usize) -> Vec<u8> {
    if i == 0 {
        return vec![0; PAGE_SIZE];
    }
    (0..PAGE_SIZE)
        .map(|j| ((j * (i + 3)) / 5 + i) as u8)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn store_holds_last_committed_images(epochs in prop::collection::vec(epoch(), 1..12)) {
        let mut store = Store::new(HeapFrames::new(), 4 << 20);
        let mut encs = Vec::new();
        let mut decs = Vec::new();
        let mut images = vec![vec![0u8; PAGES * PAGE_SIZE]; 3];
        for vm in 0..3u64 {
            store.add_image(vm, PAGES as u64).unwrap();
            encs.push(Encoder::new(EncoderConfig::default(), PAGES as u64).unwrap());
            decs.push(Decoder::new(64).unwrap());
        }
        for (n, e) in epochs.iter().enumerate() {
            let mut img = images[e.vm].clone();
            for &(p, src, tweak) in &e.writes {
                let mut c = pool(src);
                if let Some((o, b)) = tweak { c[o] = b; }
                img[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].copy_from_slice(&c);
            }
            let mut stream = Vec::new();
            let mut bounds = Vec::new();
            encs[e.vm].encode_epoch(&img, 0..PAGES as u64, &mut |c| { stream.extend_from_slice(c); bounds.push(stream.len()); });
            let vm = e.vm as u64;
            let stats = store.stats();
            let cut = e.cut.map(|c| stream.len() * c as usize / 1000);
            let mut start = 0;
            for &end in &bounds {
                let end_here = cut.map_or(end, |c| c.min(end));
                if end_here > start {
                    let r = decs[e.vm].apply_chunk(&mut store.staging(vm).unwrap(), &stream[start..end_here]);
                    if cut.is_none() { r.unwrap(); }
                }
                if cut.is_some_and(|c| c <= end) { break; }
                start = end;
            }
            if cut.is_some() {
                store.abort(vm).unwrap();
                encs[e.vm].abort_epoch();
                prop_assert_eq!(store.stats(), stats);
            } else {
                store.commit(vm, n as u64).unwrap();
                encs[e.vm].commit_epoch();
                images[e.vm] = img;
            }
            for (v, image) in images.iter().enumerate() {
                let mut page = [0u8; PAGE_SIZE];
                for p in 0..PAGES {
                    store.read_page(v as u64, p as u64, &mut page).unwrap();
                    prop_assert!(page[..] == image[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
                }
            }
            // Content is shared: never more objects than distinct non-zero pages held.
            let mut distinct: Vec<&[u8]> = images.iter().flat_map(|i| i.chunks(PAGE_SIZE)).filter(|c| c.iter().any(|&b| b != 0)).collect();
            distinct.sort();
            distinct.dedup();
            prop_assert!(store.stats().page_objects as usize <= distinct.len());
        }
    }
}
