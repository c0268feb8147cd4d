//! Round trips, stream splitting, forgeries, replays, reordering, foreign keys, truncation and
//! limits of the wire protocol.

use resilire_proto::*;
use std::collections::BTreeMap;

const VM: u64 = 7;
const OTHER_VM: u64 = 8;

fn key(b: u8) -> Key {
    Key([b; 32])
}

fn keys() -> BTreeMap<u64, Key> {
    let mut m = BTreeMap::new();
    m.insert(VM, key(1));
    m.insert(OTHER_VM, key(2));
    m
}

fn hello() -> Message<'static> {
    Message::Hello(Hello {
        vm_uuid: [0xab; 16],
        name: "db-1",
        mem_pages: 262_144,
        block_size: 64,
        group_id: 0,
        features: 0,
        codec_id: 1,
        codec_params: &[1, 2, 3],
        xl_config: "name = \"db-1\"\nmemory = 1024\nvcpus = 2\n",
    })
}

fn welcome(committed: Option<u64>) -> Message<'static> {
    Message::Welcome(Welcome {
        committed_epoch: committed,
        features: 0,
        max_chunk: MAX_CHUNK as u32,
    })
}

type Appliance = Session<BTreeMap<u64, Key>>;

/// A connected pair after the handshake, with the handshake's bytes.
fn pair_with(psalt: u8, local: u8) -> (Session, Appliance, Vec<u8>, Vec<u8>) {
    let mut p = Session::primary(VM, key(1), [psalt; 32]);
    let mut a = Session::appliance(keys(), [local; 32]);
    let h = p.seal(&hello()).unwrap();
    a.feed(&h);
    assert_eq!(a.poll().unwrap(), Some(hello()));
    assert_eq!(a.vm_id(), Some(VM));
    let w = a.seal(&welcome(Some(41))).unwrap();
    p.feed(&w);
    assert_eq!(p.poll().unwrap(), Some(welcome(Some(41))));
    assert!(p.is_established() && a.is_established());
    (p, a, h, w)
}

fn pair() -> (Session, Appliance) {
    let (p, a, _, _) = pair_with(9, 3);
    (p, a)
}

fn epoch(n: u64, data: &[u8]) -> Message<'_> {
    Message::Epoch(EpochData {
        epoch: n,
        chunk_index: 0,
        data,
    })
}

fn primary_messages(data: &[u8]) -> Vec<Message<'_>> {
    vec![
        epoch(42, data),
        Message::Epoch(EpochData {
            epoch: 42,
            chunk_index: 1,
            data: &[],
        }),
        Message::Commit(Commit {
            epoch: 42,
            chunks: 2,
            pages: 17,
            digest: [5; 32],
        }),
        Message::Heartbeat(Heartbeat { time_ms: 123_456 }),
        Message::Read(Read {
            request_id: 9,
            first_pfn: 100,
            count: MAX_READ_PAGES,
        }),
        Message::Error(ErrorMsg {
            code: ErrorCode::DECODE_FAILED,
            reason: "bad record",
        }),
        Message::Bye(Bye {
            code: ErrorCode::NONE,
        }),
    ]
}

fn appliance_messages(pages: &[u8]) -> Vec<Message<'_>> {
    vec![
        Message::Ack(Ack { epoch: 42 }),
        Message::Heartbeat(Heartbeat { time_ms: 1 }),
        Message::ReadReply(ReadReply {
            request_id: 9,
            first_pfn: 100,
            data: pages,
        }),
        Message::Error(ErrorMsg {
            code: ErrorCode::NO_MEMORY,
            reason: "store full: 0 pages free",
        }),
        Message::Bye(Bye {
            code: ErrorCode::SHUTTING_DOWN,
        }),
    ]
}

#[test]
fn every_message_round_trips_both_ways() {
    let (mut p, mut a) = pair();
    let data: Vec<u8> = (0..MAX_CHUNK).map(|i| (i * 7) as u8).collect();
    for m in primary_messages(&data) {
        let f = p.seal(&m).unwrap();
        a.feed(&f);
        assert_eq!(a.poll().unwrap(), Some(m));
        assert_eq!(a.poll().unwrap(), None);
    }
    let pages = vec![0x5a; 2 * PAGE_SIZE];
    for m in appliance_messages(&pages) {
        let f = a.seal(&m).unwrap();
        p.feed(&f);
        assert_eq!(p.poll().unwrap(), Some(m));
    }
    a.finish().unwrap();
    p.finish().unwrap();
}

#[test]
fn welcome_without_committed_epoch_and_error_as_first_reply() {
    let mut p = Session::primary(VM, key(1), [1; 32]);
    let mut a = Session::appliance(keys(), [2; 32]);
    a.feed(&p.seal(&hello()).unwrap());
    a.poll().unwrap().unwrap();
    let e = Message::Error(ErrorMsg {
        code: ErrorCode::NO_MEMORY,
        reason: "no room for this VM",
    });
    p.feed(&a.seal(&e).unwrap());
    assert_eq!(p.poll().unwrap(), Some(e));

    let (mut p, mut a) = (
        Session::primary(VM, key(1), [3; 32]),
        Session::appliance(keys(), [4; 32]),
    );
    a.feed(&p.seal(&hello()).unwrap());
    a.poll().unwrap().unwrap();
    p.feed(&a.seal(&welcome(None)).unwrap());
    assert_eq!(p.poll().unwrap(), Some(welcome(None)));
}

/// The whole conversation from the primary, as one byte stream, and the messages it holds.
fn stream() -> (Vec<u8>, Vec<Vec<u8>>, Appliance, Vec<u8>) {
    let mut p = Session::primary(VM, key(1), [9; 32]);
    let mut bytes = p.seal(&hello()).unwrap();
    // The appliance's answer, computed by a twin appliance session with the same material.
    let mut twin = Session::appliance(keys(), [3; 32]);
    twin.feed(&bytes);
    twin.poll().unwrap().unwrap();
    let w = twin.seal(&welcome(Some(1))).unwrap();
    p.feed(&w);
    p.poll().unwrap().unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut expected = vec![format!("{:?}", hello()).into_bytes()];
    for m in primary_messages(&data) {
        bytes.extend(p.seal(&m).unwrap());
        expected.push(format!("{m:?}").into_bytes());
    }
    (bytes, expected, Session::appliance(keys(), [3; 32]), w)
}

fn drain(a: &mut Appliance, got: &mut Vec<Vec<u8>>) -> Result<(), ProtoError> {
    while let Some(m) = a.poll()? {
        got.push(format!("{m:?}").into_bytes());
    }
    Ok(())
}

#[test]
fn stream_split_at_every_byte() {
    let (bytes, expected, _, _) = stream();
    for cut in 0..=bytes.len() {
        let mut a = Session::appliance(keys(), [3; 32]);
        let mut got = Vec::new();
        a.feed(&bytes[..cut]);
        drain(&mut a, &mut got).unwrap();
        a.feed(&bytes[cut..]);
        drain(&mut a, &mut got).unwrap();
        assert_eq!(got, expected, "cut at {cut}");
        a.finish().unwrap();
    }
}

#[test]
fn stream_fed_byte_by_byte() {
    let (bytes, expected, mut a, _) = stream();
    let mut got = Vec::new();
    for b in &bytes {
        a.feed(std::slice::from_ref(b));
        drain(&mut a, &mut got).unwrap();
    }
    assert_eq!(got, expected);
}

/// Feeds `bytes` and returns the error it must end in (at poll or at finish), failing if a
/// message past the first `ok_msgs` is accepted.
fn must_fail(mut a: Appliance, bytes: &[u8], ok_msgs: usize) -> ProtoError {
    a.feed(bytes);
    let mut n = 0;
    loop {
        match a.poll() {
            Ok(Some(_)) => {
                n += 1;
                assert!(n <= ok_msgs, "a forged or replayed frame was accepted");
            }
            Ok(None) => return a.finish().expect_err("stream accepted"),
            Err(e) => return e,
        }
    }
}

#[test]
fn every_flipped_bit_is_refused() {
    // Flip each bit of the handshake frame and of a data frame after it.
    let (bytes, _, _, _) = stream();
    let hello_len = HEADER_LEN + SALT_LEN + {
        let mut l = [0u8; 4];
        l.copy_from_slice(&bytes[24..28]);
        u32::from_le_bytes(l) as usize
    };
    let mut second_len = [0u8; 4];
    second_len.copy_from_slice(&bytes[hello_len + 24..hello_len + 28]);
    let end = hello_len + HEADER_LEN + u32::from_le_bytes(second_len) as usize;
    let mut kinds = std::collections::BTreeSet::new();
    for bit in 0..end * 8 {
        let mut f = bytes[..end].to_vec();
        f[bit / 8] ^= 1 << (bit % 8);
        let ok = if bit / 8 < hello_len { 0 } else { 1 };
        let e = must_fail(Session::appliance(keys(), [3; 32]), &f, ok);
        kinds.insert(
            format!("{e:?}")
                .split(['(', ' '])
                .next()
                .unwrap()
                .to_string(),
        );
    }
    // The refusals are specific, not one catch-all.
    for k in [
        "BadMagic",
        "UnsupportedVersion",
        "UnknownKind",
        "ReservedBitsSet",
        "AuthFailed",
        "Truncated",
    ] {
        assert!(kinds.contains(k), "no {k} among {kinds:?}");
    }
}

#[test]
fn replayed_frame_is_refused() {
    let (mut p, mut a) = pair();
    let f = p.seal(&epoch(1, b"abc")).unwrap();
    a.feed(&f);
    a.poll().unwrap().unwrap();
    a.feed(&f);
    assert_eq!(
        a.poll().unwrap_err(),
        ProtoError::BadSequence {
            expected: 2,
            got: 1
        }
    );
    assert_eq!(a.poll().unwrap_err(), ProtoError::Poisoned);
}

#[test]
fn peers_are_confirmed_by_their_first_live_frame() {
    let (mut p, mut a) = pair();
    assert!(p.peer_confirmed());
    assert!(!a.peer_confirmed());
    a.feed(
        &p.seal(&Message::Heartbeat(Heartbeat { time_ms: 0 }))
            .unwrap(),
    );
    a.poll().unwrap().unwrap();
    assert!(a.peer_confirmed());
}

#[test]
fn reordered_frames_are_refused() {
    let (mut p, mut a) = pair();
    let f1 = p.seal(&epoch(1, b"one")).unwrap();
    let f2 = p.seal(&epoch(1, b"two")).unwrap();
    a.feed(&f2);
    a.feed(&f1);
    assert_eq!(
        a.poll().unwrap_err(),
        ProtoError::BadSequence {
            expected: 1,
            got: 2
        }
    );
}

#[test]
fn renumbered_frame_is_refused() {
    // Rewriting the clear sequence number of a later frame to the expected one fails
    // authentication (the header is associated data, the number is in the nonce).
    let (mut p, mut a) = pair();
    let _skipped = p.seal(&epoch(1, b"one")).unwrap();
    let mut f2 = p.seal(&epoch(1, b"two")).unwrap();
    f2[16..24].copy_from_slice(&1u64.to_le_bytes());
    a.feed(&f2);
    assert_eq!(a.poll().unwrap_err(), ProtoError::AuthFailed);
}

#[test]
fn frames_from_an_older_connection_are_refused() {
    // Record a whole old connection.
    let (mut p, _a, old_hello, _) = pair_with(9, 3);
    let old_epoch = p.seal(&epoch(5, b"old data")).unwrap();
    // An attacker replays it to the appliance, which picks a new salt (new local material):
    // the HELLO itself authenticates (see SPEC.md) but the old session's frames do not.
    let mut a = Session::appliance(keys(), [4; 32]);
    a.feed(&old_hello);
    a.poll().unwrap().unwrap();
    let _welcome = a.seal(&welcome(None)).unwrap();
    assert!(
        !a.peer_confirmed(),
        "a HELLO alone does not confirm the primary"
    );
    a.feed(&old_epoch);
    assert_eq!(a.poll().unwrap_err(), ProtoError::AuthFailed);
    assert!(!a.peer_confirmed());

    // And an old appliance answer is refused by a primary with a new salt.
    let (_p, _a, _h, old_welcome) = pair_with(9, 3);
    let mut p2 = Session::primary(VM, key(1), [10; 32]);
    p2.seal(&hello()).unwrap();
    p2.feed(&old_welcome);
    assert_eq!(p2.poll().unwrap_err(), ProtoError::AuthFailed);
}

#[test]
fn reflected_frame_is_refused() {
    let (mut p, mut a) = pair();
    // The appliance's own frame with sequence 1, fed back to it where sequence 1 is due.
    let ack = a
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 5 }))
        .unwrap();
    a.feed(&ack);
    assert_eq!(a.poll().unwrap_err(), ProtoError::AuthFailed);
    // The primary's frame reflected to the primary.
    let hb = p
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 5 }))
        .unwrap();
    p.feed(&hb);
    assert_eq!(p.poll().unwrap_err(), ProtoError::AuthFailed);
}

#[test]
fn frame_sealed_with_another_vms_key_is_refused() {
    // A primary claiming VM 7 but holding VM 8's key.
    let mut p = Session::primary(VM, key(2), [9; 32]);
    let mut a = Session::appliance(keys(), [3; 32]);
    a.feed(&p.seal(&hello()).unwrap());
    assert_eq!(a.poll().unwrap_err(), ProtoError::AuthFailed);

    // A legitimate VM 8 frame injected into VM 7's connection.
    let (_p, mut a) = pair();
    let mut p8 = Session::primary(OTHER_VM, key(2), [9; 32]);
    let h8 = p8.seal(&hello()).unwrap();
    a.feed(&h8);
    assert_eq!(
        a.poll().unwrap_err(),
        ProtoError::VmMismatch {
            expected: VM,
            got: OTHER_VM
        }
    );

    // A VM the appliance does not serve.
    let mut p9 = Session::primary(99, key(9), [9; 32]);
    let mut a = Session::appliance(keys(), [3; 32]);
    a.feed(&p9.seal(&hello()).unwrap());
    assert_eq!(a.poll().unwrap_err(), ProtoError::UnknownVm(99));
}

#[test]
fn truncated_frames_are_refused() {
    let (bytes, _, _, _) = stream();
    for cut in [
        1,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 10,
        bytes.len() - 1,
    ] {
        let mut a = Session::appliance(keys(), [3; 32]);
        a.feed(&bytes[..cut]);
        while a.poll().unwrap().is_some() {}
        assert_eq!(a.finish().unwrap_err(), ProtoError::Truncated, "cut {cut}");
    }
}

#[test]
fn oversized_and_undersized_length_fields_are_refused_before_buffering() {
    let (mut p, _a) = pair();
    let f = p
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 1 }))
        .unwrap();
    for (len, err) in [
        (
            MAX_SEALED as u32 + 1,
            ProtoError::FrameTooLarge(MAX_SEALED as u32 + 1),
        ),
        (u32::MAX, ProtoError::FrameTooLarge(u32::MAX)),
        (15, ProtoError::FrameTooShort(15)),
    ] {
        let (_p, mut a) = pair();
        let mut g = f.clone();
        g[24..28].copy_from_slice(&len.to_le_bytes());
        a.feed(&g[..HEADER_LEN]); // the header alone is enough to refuse it
        assert_eq!(a.poll().unwrap_err(), err);
    }
}

#[test]
fn unknown_kind_and_version_are_clear_errors() {
    let (mut p, _a) = pair();
    let f = p
        .seal(&Message::Heartbeat(Heartbeat { time_ms: 1 }))
        .unwrap();
    let mut g = f.clone();
    g[5] = 0x77;
    let (_p, mut a) = pair();
    a.feed(&g);
    assert_eq!(a.poll().unwrap_err(), ProtoError::UnknownKind(0x77));
    let mut g = f.clone();
    g[4] = 2;
    let (_p, mut a) = pair();
    a.feed(&g);
    assert_eq!(a.poll().unwrap_err(), ProtoError::UnsupportedVersion(2));
    let mut g = f;
    g[0] = b'X';
    let (_p, mut a) = pair();
    a.feed(&g);
    assert_eq!(a.poll().unwrap_err(), ProtoError::BadMagic);
}

#[test]
fn wrong_direction_and_wrong_order_are_refused() {
    let (mut p, mut a) = pair();
    // The primary may not send ACK or a second HELLO; the appliance may not send EPOCH.
    assert_eq!(
        p.seal(&Message::Ack(Ack { epoch: 1 })).unwrap_err(),
        ProtoError::UnexpectedKind(0x12)
    );
    assert_eq!(
        p.seal(&hello()).unwrap_err(),
        ProtoError::UnexpectedKind(0x01)
    );
    assert_eq!(
        a.seal(&epoch(1, b"")).unwrap_err(),
        ProtoError::UnexpectedKind(0x10)
    );
    assert_eq!(
        a.seal(&welcome(None)).unwrap_err(),
        ProtoError::UnexpectedKind(0x02)
    );
    // A primary must start with HELLO and may not send before WELCOME.
    let mut p = Session::primary(VM, key(1), [1; 32]);
    assert_eq!(
        p.seal(&epoch(1, b"")).unwrap_err(),
        ProtoError::UnexpectedKind(0x10)
    );
    p.seal(&hello()).unwrap();
    assert_eq!(p.seal(&epoch(1, b"")).unwrap_err(), ProtoError::NotReady);
    // The appliance's first frame is WELCOME (or ERROR/BYE), nothing else.
    let mut p = Session::primary(VM, key(1), [1; 32]);
    let mut a = Session::appliance(keys(), [1; 32]);
    a.feed(&p.seal(&hello()).unwrap());
    a.poll().unwrap().unwrap();
    let hb = Message::Heartbeat(Heartbeat { time_ms: 0 });
    assert_eq!(a.seal(&hb).unwrap_err(), ProtoError::UnexpectedKind(0x20));
    a.seal(&welcome(None)).unwrap();
    a.seal(&hb).unwrap();
    // An appliance cannot answer before HELLO.
    let mut a = Session::appliance(keys(), [1; 32]);
    assert_eq!(a.seal(&welcome(None)).unwrap_err(), ProtoError::NotReady);
}

#[test]
fn field_limits_are_enforced_on_both_sides() {
    let (mut p, mut a) = pair();
    let big = vec![0u8; MAX_CHUNK + 1];
    assert!(matches!(
        p.seal(&epoch(1, &big)),
        Err(ProtoError::FieldTooLong {
            field: "epoch chunk",
            ..
        })
    ));
    let reason = "x".repeat(MAX_REASON + 1);
    let e = Message::Error(ErrorMsg {
        code: ErrorCode::INTERNAL,
        reason: &reason,
    });
    assert!(matches!(
        p.seal(&e),
        Err(ProtoError::FieldTooLong {
            field: "reason",
            ..
        })
    ));
    assert!(matches!(
        a.seal(&Message::ReadReply(ReadReply {
            request_id: 1,
            first_pfn: 0,
            data: &[0; 100]
        })),
        Err(ProtoError::BadValue(_))
    ));
    assert!(p
        .seal(&Message::Read(Read {
            request_id: 1,
            first_pfn: 0,
            count: MAX_READ_PAGES + 1
        }))
        .is_err());
    // Refused seals do not consume sequence numbers: the stream stays valid.
    let f = p.seal(&epoch(1, b"ok")).unwrap();
    a.feed(&f);
    assert!(a.poll().unwrap().is_some());

    // A decoder sees oversized length fields inside an (authenticated) payload.
    let mut payload = Vec::new();
    encode_payload(
        &Message::Error(ErrorMsg {
            code: ErrorCode(1),
            reason: "r",
        }),
        &mut payload,
    )
    .unwrap();
    payload[2..4].copy_from_slice(&(MAX_REASON as u16 + 1).to_le_bytes());
    assert!(matches!(
        decode_payload(Kind::Error, &payload),
        Err(ProtoError::FieldTooLong {
            field: "reason",
            ..
        })
    ));
    let mut payload = Vec::new();
    encode_payload(&epoch(1, b"abc"), &mut payload).unwrap();
    payload[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_payload(Kind::Epoch, &payload),
        Err(ProtoError::FieldTooLong { .. })
    ));
    // Bad block size, zero memory, non-UTF-8 names.
    let mut h = match hello() {
        Message::Hello(h) => h,
        _ => unreachable!(),
    };
    h.block_size = 48;
    assert_eq!(
        encode_payload(&Message::Hello(h.clone()), &mut Vec::new()),
        Err(ProtoError::BadValue("block size"))
    );
    h.block_size = 8192;
    assert_eq!(
        encode_payload(&Message::Hello(h), &mut Vec::new()),
        Err(ProtoError::BadValue("block size"))
    );
    let mut payload = Vec::new();
    encode_payload(&hello(), &mut payload).unwrap();
    payload[18] = 0xff; // first byte of the name
    assert_eq!(
        decode_payload(Kind::Hello, &payload),
        Err(ProtoError::Malformed("name"))
    );
}

#[test]
fn payloads_tolerate_appended_fields() {
    let mut payload = Vec::new();
    encode_payload(&Message::Ack(Ack { epoch: 3 }), &mut payload).unwrap();
    payload.extend_from_slice(b"future field");
    assert_eq!(
        decode_payload(Kind::Ack, &payload),
        Ok(Message::Ack(Ack { epoch: 3 }))
    );
}

#[test]
fn every_truncated_payload_is_malformed_not_a_panic() {
    let data = [1u8; 10];
    let pages = [2u8; PAGE_SIZE];
    let mut all = vec![hello(), welcome(Some(2))];
    all.extend(primary_messages(&data));
    all.extend(appliance_messages(&pages));
    for m in all {
        let mut payload = Vec::new();
        encode_payload(&m, &mut payload).unwrap();
        assert_eq!(decode_payload(m.kind(), &payload).unwrap(), m);
        for cut in 0..payload.len() {
            assert!(
                decode_payload(m.kind(), &payload[..cut]).is_err(),
                "{m:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn appliance_salt_depends_on_every_input() {
    let k = key(1);
    let s = derive_appliance_salt(&k, &[1; 32], &[0; 32]);
    assert_ne!(s, derive_appliance_salt(&key(2), &[1; 32], &[0; 32]));
    assert_ne!(s, derive_appliance_salt(&k, &[2; 32], &[0; 32]));
    assert_ne!(s, derive_appliance_salt(&k, &[1; 32], &[1; 32]));
    assert_eq!(s, derive_appliance_salt(&k, &[1; 32], &[0; 32]));
}

#[test]
fn after_a_refused_frame_only_an_error_can_be_sealed_and_the_peer_opens_it() {
    let (mut p, mut a) = pair();
    let f = p.seal(&epoch(1, b"abc")).unwrap();
    a.feed(&f);
    a.poll().unwrap().unwrap();
    a.feed(&f);
    assert!(matches!(a.poll(), Err(ProtoError::BadSequence { .. })));
    assert!(a.is_poisoned() && a.can_seal_refusal());
    assert_eq!(
        a.seal(&Message::Ack(Ack { epoch: 1 })).unwrap_err(),
        ProtoError::Poisoned
    );
    let e = a
        .seal(&Message::Error(ErrorMsg {
            code: ErrorCode::PROTOCOL,
            reason: "frame refused: replay",
        }))
        .unwrap();
    p.feed(&e);
    match p.poll().unwrap() {
        Some(Message::Error(m)) => assert_eq!(
            (m.code, m.reason),
            (ErrorCode::PROTOCOL, "frame refused: replay")
        ),
        other => panic!("{other:?}"),
    }
    // Before the peer authenticated, nothing can be sealed.
    let mut fresh = Session::appliance(keys(), [9; 32]);
    fresh.feed(&[0x55; 64]);
    assert!(fresh.poll().is_err());
    assert!(!fresh.can_seal_refusal());
    let r = fresh.seal(&Message::Error(ErrorMsg {
        code: ErrorCode::PROTOCOL,
        reason: "x",
    }));
    assert_eq!(r.unwrap_err(), ProtoError::Poisoned);
}

#[test]
fn try_feed_keeps_the_buffer_within_one_frame_and_a_slice() {
    let (mut p, mut a) = pair();
    let data = vec![7u8; MAX_CHUNK];
    let mut bytes = Vec::new();
    for n in 1..=4 {
        bytes.extend(p.seal(&epoch(n, &data)).unwrap());
    }
    for piece in bytes.chunks(FEED_SLICE) {
        a.try_feed(piece).unwrap();
        while a.poll().unwrap().is_some() {}
        assert!(
            a.buffer_capacity() <= FEED_BUFFER_BOUND,
            "{}",
            a.buffer_capacity()
        );
    }
    assert_eq!(a.buffered(), 0);
}
