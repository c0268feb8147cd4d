//! The heap a connection uses while a first, full epoch arrives in 1 MiB chunks stays within
//! `CONN_MEMORY` (what the appliance sets aside per admitted connection). Measured with a
//! counting global allocator, net of what the store itself accounts for.

mod common;

use common::*;
use resilire_codec::EncoderConfig;
use resilire_receiver::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // Old and new blocks both exist during the copy.
        grew(new);
        let r = unsafe { System.realloc(p, l, new) };
        CURRENT.fetch_sub(l.size(), Relaxed);
        r
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn a_connection_stays_within_conn_memory_during_a_full_first_epoch() {
    let pages = 4096u64; // 16 MiB
    let mut rx = receiver(
        64 << 20,
        &["web1"],
        ReceiverConfig {
            boot_material: [1; 32],
            ..ReceiverConfig::default()
        },
    );
    let mut p = Primary::new("web1", pages, EncoderConfig::default());
    let mut rng = Rng(77);
    let img = initial_image(pages as usize, &mut rng);
    p.connect(&mut rx, 0).unwrap();
    let bytes = p.epoch_bytes(&img);
    assert!(
        bytes.len() > 3 << 20,
        "a multi-chunk epoch: {} bytes",
        bytes.len()
    );
    // The appliance's TCP receive buffer hands out up to 256 KiB at a time.
    p.split = 256 * 1024;
    let store_before = rx.store().memory_used();
    let frames_before = rx.store().allocator().in_use();
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let back = p.deliver(&mut rx, &bytes, 1).unwrap();
    assert_eq!(back.acks, [1]);
    let peak = PEAK.load(Relaxed) - base;
    let store = rx.store().memory_used() - store_before;
    // The host frame allocator's own table of boxes (a Vec of pointers, grown by doubling).
    let frames = (rx.store().allocator().in_use() - frames_before) * 3 * 8;
    let conn = peak.saturating_sub(store + frames);
    println!(
        "epoch of {} KiB on the wire: heap peak {} KiB, store {} KiB, connection {} KiB (bound {} KiB)",
        bytes.len() / 1024,
        peak / 1024,
        store / 1024,
        conn / 1024,
        CONN_MEMORY / 1024
    );
    assert!(
        conn <= CONN_MEMORY,
        "connection used {conn} bytes, more than CONN_MEMORY = {CONN_MEMORY}"
    );
    assert_eq!(store_image(&mut rx, p.vm), img);
}
