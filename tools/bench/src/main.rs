//! `resilire-bench <dir> [--block-size N] [--zstd-level L] [--epochs N] [--batch-len N] [--xor] [--fgbi-level L] [--index-log2 N]`
//!
//! Replays the raw memory images of `<dir>` (equal sizes, sorted by name, one per epoch; `.zst`
//! files are decompressed) through FGBI and three baselines, checks each decoded image byte for
//! byte (exit status 1 and a message otherwise) and prints per-epoch lines, totals and, as the
//! last line, one JSON object with the totals.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: resilire-bench <dir> [--block-size N] [--zstd-level L] [--epochs N] [--batch-len N] [--xor] [--fgbi-level L] [--index-log2 N]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut opts = resilire_bench::Options::default();
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Option<i64> {
            let v = args.next().and_then(|v| v.parse().ok());
            if v.is_none() {
                eprintln!("{name} needs a number");
            }
            v
        };
        match a.as_str() {
            "--block-size" => match num("--block-size") {
                Some(v) => opts.block_size = v as usize,
                None => return usage(),
            },
            "--zstd-level" => match num("--zstd-level") {
                Some(v) => opts.zstd_level = v as i32,
                None => return usage(),
            },
            "--epochs" => match num("--epochs") {
                Some(v) => opts.max_epochs = v as usize,
                None => return usage(),
            },
            "--batch-len" => match num("--batch-len") {
                Some(v) => opts.batch_len = v as usize,
                None => return usage(),
            },
            "--xor" => opts.patch = false,
            "--index-log2" => match num("--index-log2") {
                Some(v) => opts.index_log2 = Some(v as u32),
                None => return usage(),
            },
            "--fgbi-level" => match num("--fgbi-level") {
                Some(v) => opts.fgbi_level = Some(v as i32),
                None => return usage(),
            },
            "-h" | "--help" => return usage(),
            _ if dir.is_none() && !a.starts_with("--") => dir = Some(PathBuf::from(a)),
            _ => return usage(),
        }
    }
    let Some(dir) = dir else { return usage() };
    match resilire_bench::run(&dir, &opts, &mut |l| println!("{l}")) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resilire-bench: FAILED: {e}");
            ExitCode::from(1)
        }
    }
}
