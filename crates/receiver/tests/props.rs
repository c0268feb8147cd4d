//! Property tests: any image sequence, any split of the byte stream, cuts anywhere; any corrupted
//! byte and any garbage is refused without touching the store.

mod common;

use common::*;
use proptest::prelude::*;
use resilire_codec::PAGE_SIZE;
use resilire_proto::{Heartbeat, Message};
use resilire_receiver::*;

fn cfg() -> ReceiverConfig {
    ReceiverConfig {
        boot_material: [5; 32],
        ..ReceiverConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the images, block size and TCP segmentation, and wherever epochs are cut, the
    /// appliance ends up holding the last acknowledged image, and READ returns it.
    #[test]
    fn streams_with_cuts_end_with_the_last_acknowledged_image(
        seed in 1u64..u64::MAX,
        pages in 4u64..40,
        epochs in 1usize..6,
        bs_log in 5u32..13,
        split in 1usize..3000,
        cuts in proptest::collection::vec((0usize..6, 0.0f64..1.0), 0..4),
    ) {
        let bs = 1usize << bs_log;
        let mut rx = receiver(64 << 20, &["p"], cfg());
        let mut p = Primary::new("p", pages, small_chunks(bs));
        p.split = split;
        let mut rng = Rng(seed);
        let mut img = initial_image(pages as usize, &mut rng);
        let mut t = 0;
        p.connect(&mut rx, t).unwrap();
        for e in 0..epochs {
            if e > 0 {
                let n = 1 + rng.below(3 * pages) as usize;
                mutate(&mut img, &mut rng, n);
            }
            for &(_, frac) in cuts.iter().filter(|(ce, _)| *ce == e) {
                let b = p.epoch_bytes(&img);
                let c = ((b.len() as f64) * frac) as usize;
                let back = p.deliver(&mut rx, &b[..c.min(b.len() - 1)], t).unwrap();
                prop_assert!(back.acks.is_empty());
                p.cut(&mut rx, t);
                prop_assert_eq!(store_image(&mut rx, p.vm), p.acked_image.clone());
                t += 1;
                p.connect(&mut rx, t).unwrap();
            }
            p.sync(&mut rx, &img, t);
            t += 1;
        }
        prop_assert_eq!(p.read_back(&mut rx, t), img.clone());
        prop_assert_eq!(store_image(&mut rx, p.vm), img);
    }

    /// Any single corrupted byte of an epoch's stream closes the connection before that epoch
    /// commits; the previous image stays byte for byte, and the VM resumes afterwards.
    #[test]
    fn a_corrupted_byte_anywhere_is_refused(seed in 1u64..u64::MAX, pos in 0.0f64..1.0, xor in 1u8..=255) {
        let mut rx = receiver(16 << 20, &["c"], cfg());
        let mut p = Primary::new("c", 24, small_chunks(64));
        let mut rng = Rng(seed);
        let img = initial_image(24, &mut rng);
        p.connect(&mut rx, 0).unwrap();
        p.sync(&mut rx, &img, 0);
        let mut img2 = img.clone();
        mutate(&mut img2, &mut rng, 30);
        let mut b = p.epoch_bytes(&img2);
        let i = ((b.len() as f64) * pos) as usize % b.len();
        b[i] ^= xor;
        let r = p.deliver(&mut rx, &b, 1);
        match r {
            Err((ConnError::Protocol(_), back)) => prop_assert!(back.acks.is_empty()),
            // A corrupted length field may leave the stream waiting for more bytes.
            Ok(back) => {
                prop_assert!(back.acks.is_empty());
                p.cut(&mut rx, 1);
            }
            Err((e, _)) => prop_assert!(false, "unexpected {:?}", e),
        }
        prop_assert_eq!(store_image(&mut rx, p.vm), img);
        prop_assert_eq!(rx.vm_status(p.vm).unwrap().committed_epoch, Some(1));
        p.connect(&mut rx, 2).unwrap();
        p.sync(&mut rx, &img2, 2);
        prop_assert_eq!(store_image(&mut rx, p.vm), img2);
    }

    /// Garbage on a fresh connection, or after a genuine handshake, never panics, never touches
    /// the store, and never disturbs the VM's live connection.
    #[test]
    fn garbage_never_touches_the_store(
        seed in 1u64..u64::MAX,
        garbage in proptest::collection::vec(any::<u8>(), 0..2000),
        after_hello in any::<bool>(),
        pieces in 1usize..64,
    ) {
        let mut rx = receiver(16 << 20, &["g"], cfg());
        let mut p = Primary::new("g", 16, small_chunks(64));
        let mut rng = Rng(seed);
        let img = initial_image(16, &mut rng);
        p.connect(&mut rx, 0).unwrap();
        p.sync(&mut rx, &img, 0);
        let live = p.conn;
        let before = footprint(&rx);
        let conn = rx.accept(1);
        let mut out = Vec::new();
        let mut q = Primary::new("g", 16, small_chunks(64));
        let mut bytes = Vec::new();
        if after_hello {
            bytes.extend_from_slice(&q.hello_frame());
        }
        bytes.extend_from_slice(&garbage);
        for piece in bytes.chunks(pieces) {
            if rx.on_bytes(conn, piece, 1, &mut out).is_err() {
                break;
            }
        }
        rx.on_close(conn);
        prop_assert_eq!(footprint(&rx), before);
        prop_assert_eq!(store_image(&mut rx, p.vm), img.clone());
        prop_assert_eq!(rx.vm_status(p.vm).unwrap().connection, live);
        let hb = p.session.as_mut().unwrap().seal(&Message::Heartbeat(Heartbeat { time_ms: 1 })).unwrap();
        prop_assert_eq!(p.deliver(&mut rx, &hb, 2).unwrap().heartbeats, 1);
        let _ = PAGE_SIZE;
    }
}
