//! Brief fuzzing runs in the test command: every `*/fuzz/run-brief.sh` (or
//! `run.sh`) of
//! the project's crates, with the nightly toolchain and cargo-fuzz that
//! cargo fuzz needs (installed here when missing).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Seconds each fuzz target runs in `lab test`.
pub const SECONDS: u32 = 20;

fn scripts(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for parent in ["crates", "tools", "appliance"] {
        let dir = root.join(parent);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            // Each script takes the seconds to run as its first argument.
            if let Some(s) = ["fuzz/run-brief.sh", "fuzz/run.sh"]
                .iter()
                .map(|n| e.path().join(n))
                .find(|p| p.exists())
            {
                out.push(s);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn ensure_tools() -> Result<()> {
    let have_nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("nightly"))
        })
        .unwrap_or(false);
    if !have_nightly {
        eprintln!("lab: installing the nightly toolchain (cargo fuzz needs it)");
        let st = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()?;
        if !st.success() {
            bail!("rustup toolchain install nightly failed");
        }
    }
    let have_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_fuzz {
        eprintln!("lab: installing cargo-fuzz");
        let st = Command::new("cargo")
            .args(["install", "-q", "--locked", "cargo-fuzz"])
            .status()?;
        if !st.success() {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    Ok(())
}

/// Runs every brief fuzz script; fails on the first crash found.
pub fn run_all(root: &Path) -> Result<()> {
    let list = scripts(root)?;
    if list.is_empty() {
        return Ok(());
    }
    ensure_tools()?;
    for s in list {
        eprintln!("lab: fuzzing briefly: {}", s.display());
        let st = Command::new("bash")
            .arg(&s)
            .arg(SECONDS.to_string())
            .current_dir(s.parent().context("fuzz dir")?)
            .status()?;
        if !st.success() {
            bail!("fuzzing found a failure: {}", s.display());
        }
    }
    Ok(())
}
