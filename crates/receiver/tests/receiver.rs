//! The receiver against an in-test primary: multi-epoch streams, cuts, forgeries, replays,
//! foreign keys, budget refusals, interleaved VMs, takeover, timeouts and status.

mod common;

use common::*;
use resilire_codec::{EncoderConfig, PAGE_SIZE};
use resilire_proto::*;
use resilire_receiver::*;

const MIB: usize = 1 << 20;

fn cfg() -> ReceiverConfig {
    ReceiverConfig {
        boot_material: [3; 32],
        ..ReceiverConfig::default()
    }
}

fn events(rx: &mut Rx) -> Vec<Event> {
    rx.take_events().collect()
}

/// Frame boundaries (offsets where a frame starts) of a stream of sealed frames with seq > 0.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut o = 0;
    while o + HEADER_LEN <= bytes.len() {
        v.push(o);
        let seq = u64::from_le_bytes(bytes[o + 16..o + 24].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[o + 24..o + 28].try_into().unwrap()) as usize;
        o += HEADER_LEN + len + if seq == 0 { SALT_LEN } else { 0 };
    }
    v
}

#[test]
fn multi_epoch_streams_read_back_byte_for_byte() {
    for (bs, enc_cfg, split) in [
        (64, small_chunks(64), 1000usize),
        (32, small_chunks(32), 4096),
        (
            256,
            EncoderConfig {
                block_size: 256,
                ..EncoderConfig::default()
            },
            65536,
        ),
        (
            4096,
            EncoderConfig {
                block_size: 4096,
                batch_len: 0,
                ..EncoderConfig::default()
            },
            7,
        ),
    ] {
        let mut rx = receiver(64 * MIB, &["web1"], cfg());
        let pages = 160u64;
        let mut p = Primary::new("web1", pages, enc_cfg);
        p.split = split;
        let mut rng = Rng(0x1234_5678 + bs as u64);
        let mut img = initial_image(pages as usize, &mut rng);
        assert_eq!(p.connect(&mut rx, 0).unwrap(), None);
        assert_eq!(rx.vm_status(p.vm).unwrap().state, VmState::Syncing);
        for e in 1..=10u64 {
            if e > 1 {
                mutate(&mut img, &mut rng, 5 + (e as usize * 7) % 40);
            }
            p.sync(&mut rx, &img, e);
            assert_eq!(p.acked, Some(e));
            let st = rx.vm_status(p.vm).unwrap();
            assert_eq!(
                (st.state, st.committed_epoch, st.epochs_committed),
                (VmState::Protected, Some(e), e)
            );
            assert_eq!(
                store_image(&mut rx, p.vm),
                img,
                "block size {bs}, epoch {e}"
            );
        }
        // An empty epoch (nothing changed) commits too.
        p.sync(&mut rx, &img.clone(), 11);
        assert_eq!(p.read_back(&mut rx, 12), img, "block size {bs}: READ");
        let st = rx.vm_status(p.vm).unwrap();
        assert_eq!(st.committed_epoch, Some(11));
        assert_eq!(st.guest_name, "web1");
        assert!(rx.xl_config(p.vm).unwrap().contains("name = \"web1\""));
        // The page directory covers the image; zero pages take no frame.
        let dir: Vec<_> = rx.page_directory(p.vm).unwrap().collect();
        assert_eq!(dir.len(), pages as usize);
        for (pfn, loc) in dir.iter().enumerate() {
            let zero = img[pfn * PAGE_SIZE..(pfn + 1) * PAGE_SIZE]
                .iter()
                .all(|&b| b == 0);
            assert_eq!(
                zero,
                *loc == resilire_store::PageLocation::Zero,
                "pfn {pfn}"
            );
        }
    }
}

#[test]
fn a_cut_anywhere_in_an_epoch_keeps_the_previous_one_and_a_reconnect_resumes() {
    let mut rx = receiver(64 * MIB, &["db"], cfg());
    let pages = 64u64;
    let mut p = Primary::new("db", pages, small_chunks(64));
    let mut rng = Rng(99);
    let img1 = initial_image(pages as usize, &mut rng);
    p.connect(&mut rx, 0).unwrap();
    p.sync(&mut rx, &img1, 1);
    let used_after_1 = footprint(&rx);
    let mut img2 = img1.clone();
    mutate(&mut img2, &mut rng, 120);

    // Learn the shape of epoch 2's stream (frame boundaries) with a throw-away connection.
    let probe = p.epoch_bytes(&img2);
    let len = probe.len();
    let starts = frame_starts(&probe);
    assert!(
        starts.len() >= 4,
        "epoch 2 should have several chunks: {starts:?}"
    );
    p.cut(&mut rx, 1);

    let mut cuts: Vec<usize> = (0..len).step_by(len / 200 + 1).collect();
    for &s in &starts {
        cuts.extend([
            s.saturating_sub(1),
            s,
            s + 1,
            s + HEADER_LEN,
            s + HEADER_LEN + 1,
        ]);
    }
    cuts.push(len - 1);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.retain(|&c| c < len);
    let mut t = 10;
    for &c in &cuts {
        t += 1;
        assert_eq!(p.connect(&mut rx, t).unwrap(), Some(1), "cut at {c}");
        let bytes = p.epoch_bytes(&img2);
        let starts = frame_starts(&bytes);
        let c = c.min(bytes.len() - 1);
        let back = p.deliver(&mut rx, &bytes[..c], t).unwrap();
        assert!(back.acks.is_empty());
        p.cut(&mut rx, t);
        assert_eq!(store_image(&mut rx, p.vm), img1, "cut at byte {c} of {len}");
        assert_eq!(
            footprint(&rx),
            used_after_1,
            "staging freed after a cut at {c}"
        );
        let aborted = events(&mut rx).iter().any(|e| {
            matches!(
                e.kind,
                EventKind::Closed {
                    aborted_epoch: Some(2)
                }
            )
        });
        let st = rx.vm_status(p.vm).unwrap();
        assert_eq!(st.committed_epoch, Some(1));
        assert_eq!(st.connection, None);
        assert_eq!(aborted, c >= starts[1], "cut at {c}: closed event");
        assert_eq!(
            st.state,
            if c >= starts[1] {
                VmState::Failed
            } else {
                VmState::Idle
            }
        );
    }
    // Cuts inside HELLO.
    for c in [1, HEADER_LEN, HEADER_LEN + SALT_LEN + 3] {
        let conn = rx.accept(t);
        let h = p.hello_frame();
        let mut out = Vec::new();
        rx.on_bytes(conn, &h[..c], t, &mut out).unwrap();
        assert!(out.is_empty());
        rx.on_close(conn);
        assert_eq!(store_image(&mut rx, p.vm), img1);
    }
    // Everything delivered, ACK lost: WELCOME reports epoch 2 and the primary keeps it.
    p.connect(&mut rx, t + 1).unwrap();
    let bytes = p.epoch_bytes(&img2);
    let conn = p.conn.unwrap();
    let mut lost = Vec::new();
    rx.on_bytes(conn, &bytes, t + 1, &mut lost).unwrap();
    p.cut(&mut rx, t + 1);
    assert_eq!(p.connect(&mut rx, t + 2).unwrap(), Some(2));
    assert_eq!(p.acked, Some(2));
    let mut img3 = img2.clone();
    mutate(&mut img3, &mut rng, 30);
    p.sync(&mut rx, &img3, t + 3);
    assert_eq!(p.read_back(&mut rx, t + 4), img3);
}

#[test]
fn forged_replayed_and_foreign_frames_are_refused_and_logged_and_the_store_is_untouched() {
    let mut rx = receiver(64 * MIB, &["a", "b"], cfg());
    let mut a = Primary::new("a", 48, small_chunks(64));
    let mut b = Primary::new("b", 16, small_chunks(64));
    let mut rng = Rng(7);
    let img_a = initial_image(48, &mut rng);
    let img_b = initial_image(16, &mut rng);
    a.connect(&mut rx, 0).unwrap();
    // Record a whole genuine connection: HELLO, HEARTBEAT, epoch 1.
    a.cut(&mut rx, 0);
    let rec_hello = a.hello_frame();
    let conn = rx.accept(1);
    a.conn = Some(conn);
    let mut out = Vec::new();
    rx.on_bytes(conn, &rec_hello, 1, &mut out).unwrap();
    let mut back = Back::default();
    a.absorb(&out, &mut back);
    let hb = a
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 1 }))
        .unwrap();
    a.deliver(&mut rx, &hb, 1).unwrap();
    let rec_epoch = a.epoch_bytes(&img_a);
    a.deliver(&mut rx, &rec_epoch, 1).unwrap();
    assert_eq!(a.acked, Some(1));
    b.connect(&mut rx, 1).unwrap();
    b.sync(&mut rx, &img_b, 1);
    let used = footprint(&rx);
    events(&mut rx);
    let mut mutated = img_a.clone();
    mutate(&mut mutated, &mut rng, 40);

    let check_intact = |rx: &mut Rx| {
        assert_eq!(store_image(rx, vm_id_of("a")), img_a);
        assert_eq!(store_image(rx, vm_id_of("b")), img_b);
        assert_eq!(footprint(rx), used);
        assert_eq!(
            rx.vm_status(vm_id_of("a")).unwrap().committed_epoch,
            Some(1)
        );
    };
    let logged = |rx: &mut Rx, want: ProtoError| {
        let ev = events(rx);
        assert!(
            ev.iter()
                .any(|e| e.kind == EventKind::FrameRefused(want) && e.level() == Level::Warn),
            "{want:?} not logged: {ev:?}"
        );
    };

    // 1. A forged (bit-flipped) EPOCH frame.
    a.cut(&mut rx, 2);
    a.connect(&mut rx, 2).unwrap();
    let mut bytes = a.epoch_bytes(&mutated);
    bytes[HEADER_LEN + 5] ^= 0x40;
    let (e, back) = a.deliver(&mut rx, &bytes, 2).unwrap_err();
    assert_eq!(e, ConnError::Protocol(ProtoError::AuthFailed));
    assert!(back.acks.is_empty());
    logged(&mut rx, ProtoError::AuthFailed);
    check_intact(&mut rx);
    let st = rx.vm_status(a.vm).unwrap();
    assert_eq!(st.state, VmState::Failed);
    assert!(
        st.last_error.unwrap().contains("authentication"),
        "{:?}",
        st.last_error
    );

    // 2. A forged clear header (sequence number rewritten) and a replayed frame.
    a.connect(&mut rx, 3).unwrap();
    let bytes = a.epoch_bytes(&mutated);
    let starts = frame_starts(&bytes);
    let first = bytes[..starts[1]].to_vec();
    a.deliver(&mut rx, &first, 3).unwrap();
    let (e, _) = a.deliver(&mut rx, &first, 3).unwrap_err();
    assert_eq!(
        e,
        ConnError::Protocol(ProtoError::BadSequence {
            expected: 3,
            got: 2
        })
    );
    logged(
        &mut rx,
        ProtoError::BadSequence {
            expected: 3,
            got: 2,
        },
    );
    check_intact(&mut rx);
    a.connect(&mut rx, 4).unwrap();
    let mut bytes = a.epoch_bytes(&mutated);
    bytes[16] = 5; // seq 2 -> 5
    let (e, _) = a.deliver(&mut rx, &bytes, 4).unwrap_err();
    assert_eq!(
        e,
        ConnError::Protocol(ProtoError::BadSequence {
            expected: 2,
            got: 5
        })
    );
    let mut bytes2 = bytes.clone();
    bytes2[16] = 2;
    bytes2[6] = 1; // flags
    a.connect(&mut rx, 4).unwrap();
    let _ = a.epoch_bytes(&mutated);
    let (e, _) = a.deliver(&mut rx, &bytes2, 4).unwrap_err();
    assert_eq!(e, ConnError::Protocol(ProtoError::ReservedBitsSet));
    check_intact(&mut rx);

    // 3. A recorded connection replayed: its HELLO authenticates (WELCOME), nothing after it
    // does, and the live connection of the VM is not taken over.
    a.connect(&mut rx, 5).unwrap();
    let live = a.conn.unwrap();
    let replay = rx.accept(5);
    let mut out = Vec::new();
    rx.on_bytes(replay, &rec_hello, 5, &mut out).unwrap();
    assert!(!out.is_empty(), "a replayed HELLO gets a WELCOME");
    assert_eq!(rx.vm_status(a.vm).unwrap().connection, Some(live));
    let e = rx.on_bytes(replay, &hb, 5, &mut out).unwrap_err();
    assert_eq!(e, ConnError::Protocol(ProtoError::AuthFailed));
    let replay2 = rx.accept(5);
    let mut rest = rec_hello.clone();
    rest.extend_from_slice(&hb);
    rest.extend_from_slice(&rec_epoch);
    let e = rx.on_bytes(replay2, &rest, 5, &mut out).unwrap_err();
    assert_eq!(e, ConnError::Protocol(ProtoError::AuthFailed));
    check_intact(&mut rx);
    assert_eq!(rx.vm_status(a.vm).unwrap().connection, Some(live));
    assert!(rx.pending_connections().is_empty());
    // The live connection still works.
    a.sync(&mut rx, &mutated, 6);
    assert_eq!(a.read_back(&mut rx, 6), mutated);

    // 4. Foreign keys: a's id sealed with b's key; b's frame injected into a's connection; an
    // id nobody configured.
    let foreign = rx.accept(7);
    let mut s = Session::primary(vm_id_of("a"), Key(key_bytes("b")), [9; 32]);
    let h = s
        .seal(&Message::Hello(Hello {
            vm_uuid: [0; 16],
            name: "a",
            mem_pages: 48,
            block_size: 64,
            group_id: 0,
            features: 0,
            codec_id: 1,
            codec_params: &[],
            xl_config: "",
        }))
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        rx.on_bytes(foreign, &h, 7, &mut out),
        Err(ConnError::Protocol(ProtoError::AuthFailed))
    );
    assert!(out.is_empty(), "nothing is sent to an unauthenticated peer");
    logged(&mut rx, ProtoError::AuthFailed);
    let b_frame = b
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 0 }))
        .unwrap();
    let (e, _) = a.deliver(&mut rx, &b_frame, 7).unwrap_err();
    assert_eq!(
        e,
        ConnError::Protocol(ProtoError::VmMismatch {
            expected: a.vm,
            got: b.vm
        })
    );
    let unknown = rx.accept(7);
    let mut s = Session::primary(vm_id_of("zzz"), Key([1; 32]), [9; 32]);
    let h = s
        .seal(&Message::Hello(Hello {
            vm_uuid: [0; 16],
            name: "zzz",
            mem_pages: 1,
            block_size: 64,
            group_id: 0,
            features: 0,
            codec_id: 1,
            codec_params: &[],
            xl_config: "",
        }))
        .unwrap();
    assert_eq!(
        rx.on_bytes(unknown, &h, 7, &mut out),
        Err(ConnError::Protocol(ProtoError::UnknownVm(vm_id_of("zzz"))))
    );
    let garbage = rx.accept(7);
    assert_eq!(
        rx.on_bytes(garbage, &[0x55; 64], 7, &mut out),
        Err(ConnError::Protocol(ProtoError::BadMagic))
    );
    assert!(out.is_empty());
    assert_eq!(store_image(&mut rx, a.vm), mutated);
    assert_eq!(store_image(&mut rx, b.vm), img_b);
    // b was never disturbed (it reconnects: the injected frame used one of its sequence numbers).
    b.cut(&mut rx, 8);
    assert_eq!(b.connect(&mut rx, 8).unwrap(), Some(1));
    let mut img_b2 = img_b.clone();
    mutate(&mut img_b2, &mut rng, 10);
    b.sync(&mut rx, &img_b2, 8);
    assert_eq!(b.read_back(&mut rx, 8), img_b2);
    assert_eq!(rx.connection_count(), 1);
}

#[test]
fn receiver_level_refusals_send_error_and_keep_the_committed_image() {
    let mut rx = receiver(64 * MIB, &["v"], cfg());
    let mut p = Primary::new("v", 32, small_chunks(64));
    let mut rng = Rng(5);
    let img = initial_image(32, &mut rng);
    p.connect(&mut rx, 0).unwrap();
    p.sync(&mut rx, &img, 0);
    let used = footprint(&rx);
    let mut img2 = img.clone();
    mutate(&mut img2, &mut rng, 20);

    let expect_error =
        |p: &mut Primary, rx: &mut Rx, bytes: Vec<u8>, code: ErrorCode, words: &str| {
            let (e, back) = p.deliver(rx, &bytes, 1).unwrap_err();
            assert!(
                matches!(&e, ConnError::Refused { code: c, .. } if *c == code),
                "{e:?}"
            );
            assert_eq!(back.errors.len(), 1, "one ERROR frame");
            assert_eq!(back.errors[0].0, code.0);
            assert!(
                back.errors[0].1.contains(words),
                "{:?} lacks {words:?}",
                back.errors[0].1
            );
            assert_eq!(store_image(rx, p.vm), img);
            assert_eq!(footprint(rx), used);
            let st = rx.vm_status(p.vm).unwrap();
            assert_eq!((st.state, st.committed_epoch), (VmState::Failed, Some(1)));
            assert!(st.last_error.unwrap().contains(words));
            let ev: Vec<Event> = rx.take_events().collect();
            assert!(ev
                .iter()
                .any(|e| matches!(&e.kind, EventKind::Refused { code: c, .. } if *c == code)));
            assert!(ev
                .iter()
                .any(|e| matches!(e.kind, EventKind::Closed { .. })));
            p.session = None;
        };

    // Epoch out of sequence.
    p.connect(&mut rx, 1).unwrap();
    p.next_epoch = 7;
    let b = p.epoch_bytes(&img2);
    expect_error(&mut p, &mut rx, b, ErrorCode::BAD_EPOCH, "expected epoch 2");
    // COMMIT with the wrong chunk count, and with the wrong page count.
    for (dc, dp, words) in [(1u32, 0u64, "chunks"), (0, 1, "pages")] {
        p.connect(&mut rx, 1).unwrap();
        let s = p.session.as_mut().unwrap();
        let mut chunks = Vec::new();
        let dirty: Vec<u64> = (0..32).collect();
        p.enc.take_stats();
        p.enc
            .encode_epoch(&img2, dirty, &mut |c| chunks.push(c.to_vec()));
        let st = p.enc.take_stats();
        p.enc.abort_epoch();
        let mut b = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.seal_into(
                &Message::Epoch(EpochData {
                    epoch: 2,
                    chunk_index: i as u32,
                    data: c,
                }),
                &mut b,
            )
            .unwrap();
        }
        let pages = st.zero_pages + st.raw_pages + st.ops_pages + st.zops_pages;
        let commit = Commit {
            epoch: 2,
            chunks: chunks.len() as u32 + dc,
            pages: pages + dp,
            digest: [0; 32],
        };
        s.seal_into(&Message::Commit(commit), &mut b).unwrap();
        expect_error(&mut p, &mut rx, b, ErrorCode::PROTOCOL, words);
    }
    // Chunks out of order.
    p.connect(&mut rx, 1).unwrap();
    let s = p.session.as_mut().unwrap();
    let b = s
        .seal(&Message::Epoch(EpochData {
            epoch: 2,
            chunk_index: 1,
            data: &[],
        }))
        .unwrap();
    expect_error(&mut p, &mut rx, b, ErrorCode::PROTOCOL, "chunk 0");
    // A chunk that does not decode (valid frame, bad records), after a good one.
    p.connect(&mut rx, 1).unwrap();
    let s = p.session.as_mut().unwrap();
    let mut b = s
        .seal(&Message::Epoch(EpochData {
            epoch: 2,
            chunk_index: 0,
            data: &[1, 3, 1, 0],
        }))
        .unwrap();
    s.seal_into(
        &Message::Epoch(EpochData {
            epoch: 2,
            chunk_index: 1,
            data: &[2, 0, 1, 2, 3],
        }),
        &mut b,
    )
    .unwrap();
    expect_error(
        &mut p,
        &mut rx,
        b,
        ErrorCode::DECODE_FAILED,
        "failed to decode",
    );
    // A page beyond the image.
    p.connect(&mut rx, 1).unwrap();
    let s = p.session.as_mut().unwrap();
    let b = s
        .seal(&Message::Epoch(EpochData {
            epoch: 2,
            chunk_index: 0,
            data: &[1, 40],
        }))
        .unwrap();
    expect_error(
        &mut p,
        &mut rx,
        b,
        ErrorCode::DECODE_FAILED,
        "beyond the image",
    );
    // READ beyond the image.
    p.connect(&mut rx, 1).unwrap();
    let s = p.session.as_mut().unwrap();
    let b = s
        .seal(&Message::Read(Read {
            request_id: 1,
            first_pfn: 30,
            count: 3,
        }))
        .unwrap();
    expect_error(
        &mut p,
        &mut rx,
        b,
        ErrorCode::OUT_OF_RANGE,
        "beyond the image",
    );
    // A HELLO with another memory size, another codec, a bad block size.
    let mut q = Primary::new("v", 64, small_chunks(64));
    let (code, reason) = q.connect(&mut rx, 1).unwrap_err();
    assert_eq!(code, ErrorCode::PROTOCOL.0);
    assert!(
        reason.contains("64 pages") && reason.contains("32 pages"),
        "{reason}"
    );
    assert_eq!(store_image(&mut rx, p.vm), img);
    // After all that the VM resumes normally.
    p.connect(&mut rx, 2).unwrap();
    p.sync(&mut rx, &img2, 2);
    assert_eq!(p.read_back(&mut rx, 2), img2);
    assert_eq!(rx.vm_status(p.vm).unwrap().state, VmState::Protected);
}

#[test]
fn a_vm_too_large_for_the_budget_is_refused_while_another_stays_intact() {
    let mut rx = receiver(2 * MIB, &["small", "big"], cfg());
    let mut small = Primary::new("small", 64, small_chunks(64));
    let mut big = Primary::new("big", 4096, small_chunks(64));
    let mut rng = Rng(11);
    let img = initial_image(64, &mut rng);
    small.connect(&mut rx, 0).unwrap();
    small.sync(&mut rx, &img, 0);
    let used = rx.store().memory_used();

    let (code, reason) = big.connect(&mut rx, 1).unwrap_err();
    assert_eq!(code, ErrorCode::NO_MEMORY.0);
    assert!(
        reason.contains("'big' does not fit") && reason.contains("16 MiB"),
        "{reason}"
    );
    let st = rx.vm_status(big.vm).unwrap();
    assert_eq!(st.state, VmState::Failed);
    assert_eq!(st.pages, None);
    assert!(st.last_error.unwrap().contains("does not fit"));
    assert!(events(&mut rx).iter().any(
        |e| matches!(&e.kind, EventKind::Refused { code, .. } if *code == ErrorCode::NO_MEMORY)
    ));
    assert_eq!(rx.store().memory_used(), used);
    assert_eq!(store_image(&mut rx, small.vm), img);
    let mut img2 = img.clone();
    mutate(&mut img2, &mut rng, 30);
    small.sync(&mut rx, &img2, 2);
    assert_eq!(small.read_back(&mut rx, 2), img2);
    assert_eq!(rx.vm_status(small.vm).unwrap().state, VmState::Protected);
}

#[test]
fn an_epoch_that_outgrows_the_store_is_refused_and_the_previous_epoch_kept() {
    // Admission counts on sharing (10%), so the VM is admitted, but random pages do not share.
    let cfg = ReceiverConfig {
        admission_percent: 10,
        ..cfg()
    };
    let mut rx = receiver(MIB, &["x", "y"], cfg);
    let mut x = Primary::new("x", 512, small_chunks(64));
    let mut y = Primary::new("y", 16, small_chunks(64));
    let mut rng = Rng(3);
    let mut img = vec![0u8; 512 * PAGE_SIZE];
    rng.fill(&mut img[..64 * PAGE_SIZE]);
    x.connect(&mut rx, 0).unwrap();
    x.sync(&mut rx, &img, 0);
    let img_y = initial_image(16, &mut rng);
    y.connect(&mut rx, 0).unwrap();
    y.sync(&mut rx, &img_y, 0);
    let used = footprint(&rx);
    let mut img2 = img.clone();
    rng.fill(&mut img2);
    let b = x.epoch_bytes(&img2);
    let (e, back) = x.deliver(&mut rx, &b, 1).unwrap_err();
    assert!(
        matches!(
            e,
            ConnError::Refused {
                code: ErrorCode::NO_MEMORY,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        back.errors[0]
            .1
            .contains("does not fit in the checkpoint store"),
        "{:?}",
        back.errors
    );
    assert!(
        back.errors[0].1.contains("epoch 1 kept"),
        "{:?}",
        back.errors
    );
    assert_eq!(footprint(&rx), used);
    assert_eq!(store_image(&mut rx, x.vm), img);
    assert_eq!(store_image(&mut rx, y.vm), img_y);
    let mut img_y2 = img_y.clone();
    mutate(&mut img_y2, &mut rng, 5);
    y.sync(&mut rx, &img_y2, 2);
    assert_eq!(y.read_back(&mut rx, 2), img_y2);
}

#[test]
fn two_vms_interleaved_on_two_connections() {
    let mut rx = receiver(64 * MIB, &["one", "two"], cfg());
    let mut p1 = Primary::new("one", 96, small_chunks(64));
    let mut p2 = Primary::new(
        "two",
        40,
        EncoderConfig {
            block_size: 128,
            ..small_chunks(128)
        },
    );
    let mut rng = Rng(21);
    let mut i1 = initial_image(96, &mut rng);
    let mut i2 = initial_image(40, &mut rng);
    p1.connect(&mut rx, 0).unwrap();
    p2.connect(&mut rx, 0).unwrap();
    for e in 1..=6u64 {
        if e > 1 {
            mutate(&mut i1, &mut rng, 25);
            mutate(&mut i2, &mut rng, 15);
        }
        let b1 = p1.epoch_bytes(&i1);
        let b2 = p2.epoch_bytes(&i2);
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        let (c1, c2) = (p1.conn.unwrap(), p2.conn.unwrap());
        let step = 333 + e as usize * 100;
        let n = b1.len().max(b2.len()).div_ceil(step);
        for k in 0..n {
            let r1 = (k * step).min(b1.len())..((k + 1) * step).min(b1.len());
            let r2 = (k * step).min(b2.len())..((k + 1) * step).min(b2.len());
            rx.on_bytes(c1, &b1[r1], e, &mut o1).unwrap();
            rx.on_bytes(c2, &b2[r2], e, &mut o2).unwrap();
        }
        let (mut k1, mut k2) = (Back::default(), Back::default());
        p1.absorb(&o1, &mut k1);
        p2.absorb(&o2, &mut k2);
        assert_eq!((k1.acks, k2.acks), (vec![e], vec![e]));
    }
    assert_eq!(p1.read_back(&mut rx, 9), i1);
    assert_eq!(p2.read_back(&mut rx, 9), i2);
    let st: Vec<_> = rx
        .status()
        .map(|s| (s.name.to_string(), s.state, s.committed_epoch))
        .collect();
    assert_eq!(st.len(), 2);
    for (_, state, epoch) in st {
        assert_eq!((state, epoch), (VmState::Protected, Some(6)));
    }
}

#[test]
fn a_newer_connection_takes_over_once_it_proves_itself_live() {
    let mut rx = receiver(64 * MIB, &["t"], cfg());
    let mut p = Primary::new("t", 32, small_chunks(64));
    let mut rng = Rng(8);
    let img = initial_image(32, &mut rng);
    p.connect(&mut rx, 0).unwrap();
    p.sync(&mut rx, &img, 0);
    let mut img2 = img.clone();
    mutate(&mut img2, &mut rng, 20);
    // Half of epoch 2 on the old connection, which then goes silent (half-open TCP).
    let bytes = p.epoch_bytes(&img2);
    let half = bytes.len() / 2;
    p.deliver(&mut rx, &bytes[..half], 1).unwrap();
    let old = p.conn.unwrap();
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!(st.connection, Some(old));

    // The primary reconnects: WELCOME says epoch 1; its HEARTBEAT confirms it; the old
    // connection is superseded and its half epoch discarded.
    p.session = None;
    assert_eq!(p.connect(&mut rx, 2).unwrap(), Some(1));
    let new = p.conn.unwrap();
    assert_eq!(rx.vm_status(p.vm).unwrap().connection, Some(new));
    assert_eq!(rx.pending_connections(), vec![old]);
    let mut out = Vec::new();
    assert_eq!(
        rx.poll_output(old, &mut out),
        Err(ConnError::Superseded { by: new })
    );
    assert!(!out.is_empty(), "the old connection is told why");
    assert_eq!(
        rx.poll_output(old, &mut out),
        Err(ConnError::UnknownConnection)
    );
    let ev = events(&mut rx);
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::Superseded { by: new }));
    assert!(ev.iter().any(|e| e.kind
        == EventKind::Active {
            took_over: Some(old)
        }));
    assert_eq!(store_image(&mut rx, p.vm), img);
    p.sync(&mut rx, &img2, 3);
    assert_eq!(p.read_back(&mut rx, 3), img2);
    // Bytes on the old connection after the takeover: refused.
    assert!(rx.on_bytes(old, &bytes[half..], 4, &mut out).is_err());
}

#[test]
fn heartbeats_are_answered_and_silent_peers_time_out() {
    let cfg = ReceiverConfig {
        dead_peer_ms: 1000,
        handshake_timeout_ms: 500,
        ..cfg()
    };
    let mut rx = receiver(8 * MIB, &["h"], cfg);
    let mut p = Primary::new("h", 16, small_chunks(64));
    let mut rng = Rng(4);
    let img = initial_image(16, &mut rng);
    p.connect(&mut rx, 0).unwrap(); // checks the HEARTBEAT answer
    assert_eq!(rx.next_deadline(), Some(1000));
    let _ = &img;
    let b = p
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Epoch(EpochData {
            epoch: 1,
            chunk_index: 0,
            data: &[1, 0],
        }))
        .unwrap();
    p.deliver(&mut rx, &b, 400).unwrap();
    assert_eq!(rx.poll_timeouts(1399), Some(1400));
    assert!(rx.pending_connections().is_empty());
    let hb = p
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 5 }))
        .unwrap();
    assert_eq!(p.deliver(&mut rx, &hb, 1300).unwrap().heartbeats, 1);
    assert_eq!(rx.vm_status(p.vm).unwrap().last_heard_ms, Some(1300));
    // Silent from 1300 on: dead at 2300, epoch in progress discarded.
    assert_eq!(rx.poll_timeouts(2299), Some(2300));
    assert_eq!(rx.poll_timeouts(2300), None);
    let c = p.conn.unwrap();
    assert_eq!(rx.pending_connections(), vec![c]);
    let mut out = Vec::new();
    assert_eq!(rx.poll_output(c, &mut out), Err(ConnError::Timeout));
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!(
        (st.state, st.committed_epoch, st.connection),
        (VmState::Failed, None, None)
    );
    assert!(st.last_error.unwrap().contains("timeout"));
    let ev = events(&mut rx);
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::Timeout { idle_ms: 1000 }));
    assert!(ev.iter().any(|e| e.kind
        == EventKind::Closed {
            aborted_epoch: Some(1)
        }));
    // A connection that never says HELLO.
    let idle = rx.accept(3000);
    assert_eq!(rx.poll_timeouts(3499), Some(3500));
    rx.poll_timeouts(3500);
    assert_eq!(rx.poll_output(idle, &mut out), Err(ConnError::Timeout));
    assert_eq!(rx.connection_count(), 0);
    assert_eq!(rx.poll_timeouts(4000), None);
}

#[test]
fn status_counts_and_life_cycle() {
    let mut rx = receiver(16 * MIB, &["s", "quiet"], cfg());
    let st = rx.vm_status(vm_id_of("quiet")).unwrap();
    assert_eq!(
        (st.state, st.pages, st.committed_epoch, st.bytes_received),
        (VmState::Idle, None, None, 0)
    );
    let mut p = Primary::new("s", 24, small_chunks(64));
    let mut rng = Rng(6);
    let mut img = initial_image(24, &mut rng);
    let conn = rx.accept(0);
    p.conn = Some(conn);
    let h = p.hello_frame();
    let mut out = Vec::new();
    rx.on_bytes(conn, &h, 0, &mut out).unwrap();
    let mut back = Back::default();
    p.absorb(&out, &mut back);
    // WELCOMEd but not yet live: not counted, not owning.
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!((st.state, st.connection), (VmState::Idle, None));
    let mut sent = h.len() as u64;
    let hb = p
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 0 }))
        .unwrap();
    sent += hb.len() as u64;
    p.deliver(&mut rx, &hb, 10).unwrap();
    assert_eq!(rx.vm_status(p.vm).unwrap().state, VmState::Syncing);
    for e in 1..=3 {
        mutate(&mut img, &mut rng, 10);
        let b = p.epoch_bytes(&img);
        sent += b.len() as u64;
        p.deliver(&mut rx, &b, 10 + e).unwrap();
    }
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!(st.bytes_received, sent);
    assert_eq!(st.epochs_committed, 3);
    assert_eq!(st.committed_epoch, Some(3));
    assert_eq!(st.last_heard_ms, Some(13));
    assert_eq!(st.state, VmState::Protected);
    assert_eq!(st.state.as_str(), "protected");
    assert_eq!(st.pages, Some(24));
    assert!(st.reserved_bytes >= 24 * PAGE_SIZE);
    // An orderly BYE: idle, no error.
    let bye = p
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Bye(Bye {
            code: ErrorCode::NONE,
        }))
        .unwrap();
    let (e, _) = p.deliver(&mut rx, &bye, 20).unwrap_err();
    assert_eq!(e, ConnError::PeerClosed);
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!(
        (st.state, st.last_error, st.committed_epoch),
        (VmState::Idle, None, Some(3))
    );
    // The primary reports an error.
    p.connect(&mut rx, 21).unwrap();
    let err = p
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Error(ErrorMsg {
            code: ErrorCode::SHUTTING_DOWN,
            reason: "host going down",
        }))
        .unwrap();
    p.deliver(&mut rx, &err, 22).unwrap_err();
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!(st.state, VmState::Failed);
    assert!(st.last_error.unwrap().contains("host going down"));
    let ev = events(&mut rx);
    assert!(ev.iter().any(
        |e| matches!(&e.kind, EventKind::PeerError { reason, .. } if reason == "host going down")
    ));
    for e in &ev {
        assert!(!e.to_string().is_empty());
    }
    // Keys withdrawn: the live connection closes, the image stays.
    p.connect(&mut rx, 23).unwrap();
    let c = p.conn.unwrap();
    rx.set_keys(
        &[VmKey {
            name: "quiet".into(),
            key: key_bytes("quiet"),
        }],
        24,
    )
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(rx.poll_output(c, &mut out), Err(ConnError::KeyWithdrawn));
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!(
        (st.has_key, st.committed_epoch, st.connection),
        (false, Some(3), None)
    );
    assert_eq!(store_image(&mut rx, p.vm), img);
    // A HELLO for it is now refused without a word.
    let conn = rx.accept(25);
    let h = p.hello_frame();
    let mut out = Vec::new();
    assert_eq!(
        rx.on_bytes(conn, &h, 25, &mut out),
        Err(ConnError::Protocol(ProtoError::UnknownVm(p.vm)))
    );
    assert!(out.is_empty());
}

#[test]
fn vm_ids_and_key_sets() {
    assert_ne!(vm_id_of("a"), vm_id_of("b"));
    assert_eq!(vm_id_of("web1"), vm_id_of("web1"));
    let k = |n: &str| VmKey {
        name: n.into(),
        key: [1; 32],
    };
    let store = resilire_store::Store::new(resilire_store::HeapFrames::new(), MIB);
    assert_eq!(
        Receiver::new(store, &[k("a"), k("a")], cfg()).unwrap_err(),
        KeyError::Duplicate("a".into())
    );
    assert!(!format!("{:?}", k("a")).contains("1, 1"));
}

#[test]
fn every_connection_gets_a_fresh_appliance_salt_even_for_a_replayed_hello() {
    let mut rx = receiver(4 * MIB, &["r"], cfg());
    let mut p = Primary::new("r", 8, small_chunks(64));
    let h = p.hello_frame();
    let mut salts = std::collections::BTreeSet::new();
    for t in [0, 0, 1, 1, 2] {
        let c = rx.accept(t);
        let mut out = Vec::new();
        rx.on_bytes(c, &h, t, &mut out).unwrap();
        // WELCOME is the appliance's first frame: its clear salt follows the header.
        assert_eq!(out[5], Kind::Welcome as u8);
        salts.insert(out[HEADER_LEN..HEADER_LEN + SALT_LEN].to_vec());
        rx.on_close(c);
    }
    assert_eq!(salts.len(), 5);
    // Another boot material gives other salts for the same counter and time.
    let mut rx2 = receiver(
        4 * MIB,
        &["r"],
        ReceiverConfig {
            boot_material: [4; 32],
            ..cfg()
        },
    );
    let c = rx2.accept(0);
    let mut out = Vec::new();
    rx2.on_bytes(c, &h, 0, &mut out).unwrap();
    assert!(salts.insert(out[HEADER_LEN..HEADER_LEN + SALT_LEN].to_vec()));
}

#[test]
fn key_changes_and_image_removal() {
    let mut rx = receiver(
        8 * MIB,
        &["k", "other"],
        ReceiverConfig {
            max_events: 4,
            ..cfg()
        },
    );
    let mut p = Primary::new("k", 8, small_chunks(64));
    let mut rng = Rng(12);
    let img = initial_image(8, &mut rng);
    p.connect(&mut rx, 0).unwrap();
    p.sync(&mut rx, &img, 0);
    // A connection accepted before the key changes, whose HELLO carries the old key.
    let early = rx.accept(1);
    let old_hello = p.hello_frame();
    let keys = [
        VmKey {
            name: "k".into(),
            key: [0xee; 32],
        },
        VmKey {
            name: "other".into(),
            key: key_bytes("other"),
        },
    ];
    rx.set_keys(&keys, 1).unwrap();
    let live = p.conn.unwrap();
    assert_eq!(rx.pending_connections(), vec![live]);
    let mut out = Vec::new();
    assert_eq!(rx.poll_output(live, &mut out), Err(ConnError::KeyWithdrawn));
    let mut out = Vec::new();
    let e = rx.on_bytes(early, &old_hello, 2, &mut out).unwrap_err();
    assert!(
        matches!(&e, ConnError::Refused { code: ErrorCode::UNKNOWN_VM, reason } if reason.contains("changed")),
        "{e:?}"
    );
    // With the new key the VM resumes from its image.
    p.key = [0xee; 32];
    p.session = None;
    assert_eq!(p.connect(&mut rx, 3).unwrap(), Some(1));
    assert_eq!(p.read_back(&mut rx, 3), img);
    // Removing the image closes the connection and frees the reservation; the VM starts over.
    let reserved = rx.vm_status(p.vm).unwrap().reserved_bytes;
    assert!(reserved > 0);
    rx.remove_vm(p.vm, 4).unwrap();
    let st = rx.vm_status(p.vm).unwrap();
    assert_eq!(
        (st.pages, st.committed_epoch, st.reserved_bytes),
        (None, None, 0)
    );
    assert_eq!(
        rx.poll_output(p.conn.unwrap(), &mut out),
        Err(ConnError::KeyWithdrawn)
    );
    assert_eq!(rx.store().allocator().in_use(), 0);
    // The event queue kept only the newest events.
    assert!(rx.events_dropped() > 0);
    assert_eq!(rx.take_events().count(), 4);
    // Duplicate names are refused and change nothing.
    assert_eq!(
        rx.set_keys(&[keys[0].clone(), keys[0].clone()], 5),
        Err(KeyError::Duplicate("k".into()))
    );
    assert!(rx.vm_status(vm_id_of("other")).unwrap().has_key);
}

#[test]
fn refused_frames_after_welcome_get_an_error_and_are_counted() {
    let mut rx = receiver(64 * MIB, &["a", "b"], cfg());
    let mut a = Primary::new("a", 32, small_chunks(64));
    let mut b = Primary::new("b", 16, small_chunks(64));
    let mut rng = Rng(21);
    let img_a = initial_image(32, &mut rng);
    let img_b = initial_image(16, &mut rng);
    a.connect(&mut rx, 0).unwrap();
    a.sync(&mut rx, &img_a, 0);
    b.connect(&mut rx, 0).unwrap();
    b.sync(&mut rx, &img_b, 0);
    let used = footprint(&rx);
    let mut mutated = img_a.clone();
    mutate(&mut mutated, &mut rng, 20);
    assert_eq!(rx.counters(), Counters::default());

    // Each case: (what, the bytes after a live connection, the reason's words).
    let mut n = 0;
    let mut expect_error =
        |rx: &mut Rx, a: &mut Primary, bytes: Vec<u8>, words: &str, want: ProtoError| {
            let (e, back) = a.deliver(rx, &bytes, 1).unwrap_err();
            assert_eq!(e, ConnError::Protocol(want));
            assert_eq!(
                back.errors.len(),
                1,
                "{words}: one ERROR expected: {back:?}"
            );
            let (code, reason) = &back.errors[0];
            assert_eq!(*code, ErrorCode::PROTOCOL.0);
            assert!(
                reason.starts_with("frame refused") && reason.contains(words),
                "{reason}"
            );
            n += 1;
            assert_eq!(rx.counters().frames_refused, n);
            assert_eq!(rx.vm_status(a.vm).unwrap().frames_refused, n);
            assert_eq!(store_image(rx, a.vm), img_a);
            assert_eq!(store_image(rx, vm_id_of("b")), img_b);
            assert_eq!(footprint(rx), used);
            assert_eq!(rx.vm_status(a.vm).unwrap().committed_epoch, Some(1));
            let ev: Vec<Event> = rx.take_events().collect();
            assert!(
                ev.iter()
                    .any(|e| e.kind == EventKind::FrameRefused(want) && e.level() == Level::Warn),
                "{ev:?}"
            );
            a.connect(rx, 2).unwrap();
        };
    // Forged: a corrupted tag in the middle of an epoch.
    let mut bytes = a.epoch_bytes(&mutated);
    let starts = frame_starts(&bytes);
    bytes[starts[1] - 1] ^= 1;
    expect_error(
        &mut rx,
        &mut a,
        bytes,
        "authentication",
        ProtoError::AuthFailed,
    );
    a.pending = None;
    a.enc.abort_epoch();
    // Replayed: the first chunk twice.
    let bytes = a.epoch_bytes(&mutated);
    let starts = frame_starts(&bytes);
    let mut twice = bytes[..starts[1]].to_vec();
    twice.extend_from_slice(&bytes[..starts[1]]);
    expect_error(
        &mut rx,
        &mut a,
        twice,
        "sequence",
        ProtoError::BadSequence {
            expected: 3,
            got: 2,
        },
    );
    a.pending = None;
    a.enc.abort_epoch();
    // Malformed: a bad magic, an unknown kind.
    let mut bytes = a
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 0 }))
        .unwrap();
    bytes[0] = b'X';
    expect_error(&mut rx, &mut a, bytes, "magic", ProtoError::BadMagic);
    let mut bytes = a
        .session
        .as_mut()
        .unwrap()
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 0 }))
        .unwrap();
    bytes[5] = 0xf7;
    expect_error(
        &mut rx,
        &mut a,
        bytes,
        "kind",
        ProtoError::UnknownKind(0xf7),
    );

    // Before a HELLO authenticated, nothing is sent, but the refusal is counted.
    let c = rx.accept(3);
    let mut out = Vec::new();
    assert_eq!(
        rx.on_bytes(c, &[0x55; 64], 3, &mut out),
        Err(ConnError::Protocol(ProtoError::BadMagic))
    );
    assert!(out.is_empty());
    assert_eq!(rx.counters().frames_refused, 5);
    // An oversized "HELLO" (a genuine header announcing a 1 MiB frame) is not buffered past
    // the largest HELLO.
    let mut h = a.hello_frame();
    h[24..28].copy_from_slice(&(MAX_SEALED as u32).to_le_bytes());
    h.resize(MAX_HELLO_FRAME + 1, 0);
    let c = rx.accept(3);
    let e = rx.on_bytes(c, &h, 3, &mut out).unwrap_err();
    assert!(
        matches!(e, ConnError::Protocol(ProtoError::FieldTooLong { .. })),
        "{e:?}"
    );
    assert!(out.is_empty());
    assert_eq!(rx.counters().frames_refused, 6);
    assert_eq!(rx.counters().requests_refused, 0);
    // Receiver-level refusals are counted apart.
    a.connect(&mut rx, 4).unwrap();
    let bytes = {
        let s = a.session.as_mut().unwrap();
        s.seal(&Message::Epoch(EpochData {
            epoch: 9,
            chunk_index: 0,
            data: &[],
        }))
        .unwrap()
    };
    let (e, back) = a.deliver(&mut rx, &bytes, 4).unwrap_err();
    assert!(
        matches!(
            e,
            ConnError::Refused {
                code: ErrorCode::BAD_EPOCH,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(back.errors.len(), 1);
    assert_eq!(rx.counters().requests_refused, 1);
    assert_eq!(rx.vm_status(a.vm).unwrap().requests_refused, 1);
    // The VM still works after all that.
    a.connect(&mut rx, 5).unwrap();
    a.sync(&mut rx, &mutated, 5);
    assert_eq!(a.read_back(&mut rx, 5), mutated);
    assert_eq!(store_image(&mut rx, b.vm), img_b);
}

#[test]
fn connections_beyond_the_heap_set_aside_are_refused_with_no_memory() {
    let cfg = ReceiverConfig {
        conn_memory_limit: 2 * CONN_MEMORY + CONN_MEMORY / 2,
        ..cfg()
    };
    let mut rx = receiver(64 * MIB, &["a", "b", "c"], cfg);
    let mut a = Primary::new("a", 16, small_chunks(64));
    let mut b = Primary::new("b", 16, small_chunks(64));
    let mut c = Primary::new("c", 16, small_chunks(64));
    let mut rng = Rng(5);
    let img_a = initial_image(16, &mut rng);
    let img_b = initial_image(16, &mut rng);
    a.connect(&mut rx, 0).unwrap();
    a.sync(&mut rx, &img_a, 0);
    b.connect(&mut rx, 0).unwrap();
    b.sync(&mut rx, &img_b, 0);
    // A third VM does not fit beside the two live connections.
    let (code, reason) = c.connect(&mut rx, 1).unwrap_err();
    assert_eq!(code, ErrorCode::NO_MEMORY.0);
    assert!(
        reason.contains("no memory for another connection") && reason.contains("'c'"),
        "{reason}"
    );
    assert_eq!(rx.counters().no_memory, 1);
    assert_eq!(rx.vm_status(c.vm).unwrap().state, VmState::Failed);
    // The others are untouched and keep working; a reconnect of the same VM is admitted.
    assert_eq!(store_image(&mut rx, a.vm), img_a);
    assert_eq!(a.connect(&mut rx, 2).unwrap(), Some(1));
    let mut img_a2 = img_a.clone();
    mutate(&mut img_a2, &mut rng, 4);
    a.sync(&mut rx, &img_a2, 2);
    assert_eq!(b.read_back(&mut rx, 2), img_b);
    // Once one goes, the third is admitted.
    b.cut(&mut rx, 3);
    assert_eq!(c.connect(&mut rx, 3).unwrap(), None);
    // The live heap check: too little free heap refuses a HELLO.
    c.cut(&mut rx, 4);
    rx.set_heap_free(Some(CONN_MEMORY - 1));
    let (code, reason) = c.connect(&mut rx, 4).unwrap_err();
    assert_eq!(code, ErrorCode::NO_MEMORY.0);
    assert!(reason.contains("heap exhausted"), "{reason}");
    rx.set_heap_free(None);
    assert_eq!(c.connect(&mut rx, 5).unwrap(), None);
    assert_eq!(a.read_back(&mut rx, 5), img_a2);
    assert_eq!(rx.counters().no_memory, 2);
}

#[test]
fn a_peer_taking_output_is_not_a_dead_peer() {
    let mut rx = receiver(16 * MIB, &["a"], cfg());
    let mut a = Primary::new("a", 16, small_chunks(64));
    a.connect(&mut rx, 0).unwrap();
    let conn = a.conn.unwrap();
    // Silent for 4 s, but taking a large reply off the connection meanwhile.
    rx.peer_alive(conn, 4_000);
    rx.poll_timeouts(8_000);
    assert!(rx.pending_connections().is_empty());
    assert_eq!(rx.vm_status(a.vm).unwrap().connection, Some(conn));
    rx.poll_timeouts(9_001);
    assert_eq!(rx.pending_connections(), vec![conn]);
}
