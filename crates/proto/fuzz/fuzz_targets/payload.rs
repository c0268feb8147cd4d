//! Fuzzes the payload decoder of every kind directly (behind the AEAD the frame reader fuzzer
//! rarely reaches it): the first byte picks the kind. Anything decoded must re-encode to a
//! payload that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resilire_proto::*;

fuzz_target!(|data: &[u8]| {
    let Some((&k, payload)) = data.split_first() else { return };
    let Some(kind) = Kind::from_u8(k) else { return };
    if let Ok(m) = decode_payload(kind, payload) {
        let mut again = Vec::new();
        encode_payload(&m, &mut again).expect("a decoded message re-encodes");
        assert_eq!(decode_payload(kind, &again).expect("re-decodes"), m);
    }
});
