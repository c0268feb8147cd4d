//! Runs the bench logic on a small generated image sequence, and on every captured set found in
//! the repository (directories of at least two `*.img`, `*.raw`, `*.raw.zst` or `*.xor.zst`
//! files under tools/capture or tests-qemu, e.g. the packed sets of tools/capture/data).

use resilire_bench::{run, Options};
use std::path::{Path, PathBuf};

fn generated(dir: &Path) {
    let pages = 64;
    let mut img = vec![0u8; pages * 4096];
    for (i, b) in img.iter_mut().enumerate().take(20 * 4096) {
        *b = (i / 7 % 251) as u8;
    }
    for e in 0..4u64 {
        for k in 0..50 {
            let off = ((e * 7919 + k * 104729) as usize) % (img.len() - 8);
            img[off..off + 8].copy_from_slice(&(e * 1000 + k).to_le_bytes());
        }
        img.copy_within(0..4096, ((e as usize + 30) % pages) * 4096);
        std::fs::write(dir.join(format!("epoch_{e:03}.img")), &img).unwrap();
    }
    // The compressed form is read too.
    let z = zstd::stream::encode_all(&img[..], 3).unwrap();
    std::fs::write(dir.join("epoch_004.img.zst"), z).unwrap();
}

#[test]
fn bench_runs_and_checks_generated_images() {
    let dir = std::env::temp_dir().join(format!("resilire-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    generated(&dir);
    for bs in [32, 64, 4096] {
        let mut lines = Vec::new();
        let opts = Options {
            block_size: bs,
            ..Options::default()
        };
        let r = run(&dir, &opts, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(r.epochs.len(), 5);
        assert_eq!(r.steady.epochs, 4);
        let last = lines.last().unwrap();
        assert!(last.starts_with('{') && last.ends_with('}'), "{last}");
        assert!(last.contains("\"steady\"") && last.contains("\"fgbi_bytes\""));
        assert!(r.steady.fgbi < r.steady.remus);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn captured_sets(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let mut images = 0;
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            captured_sets(&p, out);
        } else {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if [".img", ".img.zst", ".raw", ".raw.zst", ".xor.zst"]
                .iter()
                .any(|s| n.ends_with(s))
            {
                images += 1;
            }
        }
    }
    if images >= 2 {
        out.push(root.to_path_buf());
    }
}

#[test]
fn bench_runs_on_captured_sets_in_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut sets = Vec::new();
    for d in ["tools/capture", "tests-qemu"] {
        captured_sets(&repo.join(d), &mut sets);
    }
    if sets.is_empty() {
        eprintln!("no captured image set in the repository; nothing to replay");
    }
    for set in sets {
        let mut lines = Vec::new();
        let r = run(&set, &Options::default(), &mut |l| {
            lines.push(l.to_string())
        });
        let r = r.unwrap_or_else(|e| panic!("{}: {e}", set.display()));
        eprintln!("{}: {}", set.display(), lines.last().unwrap());
        assert!(!r.epochs.is_empty());
    }
}
