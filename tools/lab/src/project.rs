//! Builds the project's own binaries that go into the lab's images.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's binaries the lab packs into dom0 and guest images.
pub struct Artifacts {
    /// `resilire-shim`, for dom0 (dynamically linked against libxenctrl).
    pub shim: PathBuf,
    /// `resilire-capture`, for dom0 (unpacks the captured memory sets).
    pub capture: PathBuf,
    /// `resilire-workload`, static, for the test guest.
    pub workload: PathBuf,
    /// The appliance unikernel (a PV ELF); `None` when skipped on request.
    pub appliance: Option<PathBuf>,
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn cargo_build(root: &Path, package: &str, target: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(["build", "--release", "-q", "-p", package]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    eprintln!("lab: building {package}{}", target.map(|t| format!(" for {t}")).unwrap_or_default());
    if !cmd.status().context("running cargo")?.success() {
        bail!("cargo build of {package} failed");
    }
    Ok(())
}

/// Builds everything the images need, in release mode.
pub fn build(root: &Path) -> Result<Artifacts> {
    cargo_build(root, "resilire-shim", None)?;
    cargo_build(root, "resilire-capture", None)?;
    cargo_build(root, "resilire-workload", Some("x86_64-unknown-linux-musl"))?;
    // RESILIRE_LAB_SKIP=appliance lets lab work go on while the unikernel is
    // being changed; scenarios that need it then fail with a clear message.
    let skip_appliance = std::env::var("RESILIRE_LAB_SKIP").is_ok_and(|v| v.split(',').any(|s| s == "appliance"));
    if !skip_appliance {
        cargo_build(root, "resilire-appliance", Some("x86_64-unknown-none"))?;
    }
    let t = target_dir(root);
    Ok(Artifacts {
        shim: t.join("release/resilire-shim"),
        capture: t.join("release/resilire-capture"),
        workload: t.join("x86_64-unknown-linux-musl/release/resilire-workload"),
        appliance: (!skip_appliance).then(|| t.join("x86_64-unknown-none/release/resilire-appliance")),
    })
}
