//! Property tests: arbitrary messages round-trip through sealed frames split anywhere, and
//! arbitrary bytes never make the reader panic.

use proptest::prelude::*;
use resilire_proto::*;
use std::collections::BTreeMap;

/// An owned message, from which a borrowed [`Message`] is built.
#[derive(Debug, Clone)]
enum Owned {
    Epoch(u64, u32, Vec<u8>),
    Commit(u64, u32, u64, [u8; 32]),
    Heartbeat(u64),
    Read(u32, u64, u32),
    Error(u16, String),
    Bye(u16),
}

impl Owned {
    fn msg(&self) -> Message<'_> {
        match self {
            Owned::Epoch(e, i, d) => Message::Epoch(EpochData {
                epoch: *e,
                chunk_index: *i,
                data: d,
            }),
            Owned::Commit(e, c, p, d) => Message::Commit(Commit {
                epoch: *e,
                chunks: *c,
                pages: *p,
                digest: *d,
            }),
            Owned::Heartbeat(t) => Message::Heartbeat(Heartbeat { time_ms: *t }),
            Owned::Read(r, p, c) => Message::Read(Read {
                request_id: *r,
                first_pfn: *p,
                count: *c,
            }),
            Owned::Error(c, r) => Message::Error(ErrorMsg {
                code: ErrorCode(*c),
                reason: r,
            }),
            Owned::Bye(c) => Message::Bye(Bye {
                code: ErrorCode(*c),
            }),
        }
    }
}

fn owned() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(e, i, d)| Owned::Epoch(e, i, d)),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(e, c, p, d)| Owned::Commit(e, c, p, d)),
        any::<u64>().prop_map(Owned::Heartbeat),
        (any::<u32>(), any::<u64>(), 1..=MAX_READ_PAGES).prop_map(|(r, p, c)| Owned::Read(r, p, c)),
        (any::<u16>(), "\\PC{0,200}").prop_map(|(c, r)| Owned::Error(c, r)),
        any::<u16>().prop_map(Owned::Bye),
    ]
}

#[derive(Debug, Clone)]
struct HelloOwned {
    uuid: [u8; 16],
    name: String,
    mem: u64,
    bs_log: u32,
    group: u64,
    features: u64,
    codec: u16,
    params: Vec<u8>,
    xl: String,
}

fn hello_owned() -> impl Strategy<Value = HelloOwned> {
    (
        any::<[u8; 16]>(),
        "\\PC{0,40}",
        1..u64::MAX,
        5u32..=12,
        any::<u64>(),
        any::<u64>(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..=MAX_CODEC_PARAMS),
        "\\PC{0,500}",
    )
        .prop_map(
            |(uuid, name, mem, bs_log, group, features, codec, params, xl)| HelloOwned {
                uuid,
                name,
                mem,
                bs_log,
                group,
                features,
                codec,
                params,
                xl,
            },
        )
}

fn keys() -> BTreeMap<u64, Key> {
    let mut m = BTreeMap::new();
    m.insert(3, Key([3; 32]));
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_conversations_round_trip(
        h in hello_owned(),
        committed in proptest::option::of(any::<u64>()),
        msgs in proptest::collection::vec(owned(), 0..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        psalt in any::<[u8; 32]>(),
        local in any::<[u8; 32]>(),
    ) {
        let hello = Message::Hello(Hello {
            vm_uuid: h.uuid, name: &h.name, mem_pages: h.mem, block_size: 1 << h.bs_log,
            group_id: h.group, features: h.features, codec_id: h.codec, codec_params: &h.params,
            xl_config: &h.xl,
        });
        let mut p = Session::primary(3, Key([3; 32]), psalt);
        let mut a = Session::appliance(keys(), local);
        a.feed(&p.seal(&hello).unwrap());
        prop_assert_eq!(a.poll().unwrap(), Some(hello.clone()));
        let w = Message::Welcome(Welcome { committed_epoch: committed, features: h.features, max_chunk: 4096 });
        p.feed(&a.seal(&w).unwrap());
        prop_assert_eq!(p.poll().unwrap(), Some(w));

        // Both directions: the primary's messages, and the same kinds the appliance may send.
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(p.seal(&m.msg()).unwrap());
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort();
        let mut got = Vec::new();
        for w in points.windows(2) {
            a.feed(&stream[w[0]..w[1]]);
            while let Some(m) = a.poll().unwrap() {
                got.push(format!("{m:?}"));
            }
        }
        let want: Vec<String> = msgs.iter().map(|m| format!("{:?}", m.msg())).collect();
        prop_assert_eq!(got, want);
        a.finish().unwrap();
        for m in msgs.iter().filter(|m| m.msg().kind().from_appliance()) {
            p.feed(&a.seal(&m.msg()).unwrap());
            prop_assert_eq!(p.poll().unwrap(), Some(m.msg()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6)) {
        let mut a = Session::appliance(keys(), [0; 32]);
        for c in &chunks {
            a.feed(c);
            prop_assert!(!matches!(a.poll(), Ok(Some(_))), "garbage authenticated");
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Some(k) = Kind::from_u8(kind) {
            let _ = decode_payload(k, &payload);
        }
    }

    #[test]
    fn valid_header_with_garbage_body_is_refused(seqlen in 16u32..2000, body in proptest::collection::vec(any::<u8>(), 0..2100)) {
        let h = Header { kind: Kind::Hello, vm_id: 3, seq: 0, sealed_len: seqlen }.to_bytes();
        let mut a = Session::appliance(keys(), [0; 32]);
        a.feed(&h);
        a.feed(&body);
        match a.poll() {
            Ok(Some(_)) => prop_assert!(false, "garbage authenticated"),
            Ok(None) => prop_assert!(a.finish().is_err()),
            Err(e) => prop_assert_eq!(e, ProtoError::AuthFailed),
        }
    }
}
