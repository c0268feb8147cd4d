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
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn cargo_build(root: &Path, package: &str, target: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["build", "--release", "-q", "-p", package]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    eprintln!(
        "lab: building {package}{}",
        target.map(|t| format!(" for {t}")).unwrap_or_default()
    );
    if !cmd.status().context("running cargo")?.success() {
        bail!("cargo build of {package} failed");
    }
    Ok(())
}

/// A copy of `bin` without debug information in `dir` (dom0's initramfs
/// lives in RAM and is unpacked under TCG: every megabyte costs boot time).
fn stripped(bin: PathBuf, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let out = dir.join(bin.file_name().context("binary name")?);
    let st = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(&bin)
        .status()
        .context("running strip")?;
    if !st.success() {
        bail!("strip {} failed", bin.display());
    }
    Ok(out)
}

/// Builds everything the images need, in release mode; dom0's and the
/// guest's binaries are stripped into `bin_dir`.
pub fn build(root: &Path, bin_dir: &Path) -> Result<Artifacts> {
    cargo_build(root, "resilire-shim", None)?;
    cargo_build(root, "resilire-capture", None)?;
    cargo_build(root, "resilire-workload", Some("x86_64-unknown-linux-musl"))?;
    // RESILIRE_LAB_SKIP=appliance lets lab work go on while the unikernel is
    // being changed; scenarios that need it then fail with a clear message.
    let skip_appliance =
        std::env::var("RESILIRE_LAB_SKIP").is_ok_and(|v| v.split(',').any(|s| s == "appliance"));
    if !skip_appliance {
        cargo_build(root, "resilire-appliance", Some("x86_64-unknown-none"))?;
    }
    let t = target_dir(root);
    Ok(Artifacts {
        shim: stripped(t.join("release/resilire-shim"), bin_dir)?,
        capture: stripped(t.join("release/resilire-capture"), bin_dir)?,
        workload: stripped(
            t.join("x86_64-unknown-linux-musl/release/resilire-workload"),
            bin_dir,
        )?,
        appliance: (!skip_appliance)
            .then(|| t.join("x86_64-unknown-none/release/resilire-appliance")),
    })
}
