//! Writes seed inputs for the decoder fuzz target (`fuzz/fuzz_targets/decode.rs`) into the
//! directory given (default `fuzz/corpus/decode`): real encoded epochs of an 8-page image at
//! every block size, in the target's input layout.
use resilire_codec::{Encoder, EncoderConfig, PAGE_SIZE};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/decode".into());
    std::fs::create_dir_all(&dir).unwrap();
    let pages = 8usize;
    let mut img = vec![0u8; pages * PAGE_SIZE];
    for (i, b) in img[..3 * PAGE_SIZE].iter_mut().enumerate() {
        *b = (i % 61) as u8 ^ (i / 900) as u8;
    }
    let mut n = 0;
    for sel in 0..8u8 {
        for batch in [true, false] {
            let bs = 32usize << sel;
            let cfg = EncoderConfig {
                block_size: bs,
                batch_len: if batch {
                    EncoderConfig::default().batch_len
                } else {
                    0
                },
                ..EncoderConfig::default()
            };
            let mut enc = Encoder::new(cfg, pages as u64).unwrap();
            let mut epoch = |img: &[u8]| {
                let mut out = Vec::new();
                enc.encode_epoch(img, 0..pages as u64, &mut |c| out.extend_from_slice(c));
                enc.commit_epoch();
                out
            };
            let e0 = epoch(&img);
            let mut next = img.clone();
            next.copy_within(0..PAGE_SIZE, 5 * PAGE_SIZE);
            next[100..108].copy_from_slice(b"changed!");
            next[2 * PAGE_SIZE..3 * PAGE_SIZE].fill(0);
            let e1 = epoch(&next);
            if e0.len() > u16::MAX as usize {
                continue;
            }
            let mut input = vec![sel];
            input.extend_from_slice(&(e0.len() as u16).to_le_bytes());
            input.extend_from_slice(&e0);
            input.extend_from_slice(&e1);
            std::fs::write(format!("{dir}/seed-{sel}-{batch}"), input).unwrap();
            n += 1;
        }
    }
    println!("{n} seeds in {dir}");
}
