//! Installs what the lab needs on a Debian 12 machine, idempotently: Debian
//! packages (only those missing are installed) and the Rust targets.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Debian packages the lab and the project's build need.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "libxen-dev",
    "linux-image-amd64",
    "busybox-static",
    "iproute2",
    "bash",
    "zstd",
    "binutils",
];

/// Rust targets beyond the host's: the appliance and the static test workload.
pub const RUST_TARGETS: &[&str] = &["x86_64-unknown-none", "x86_64-unknown-linux-musl"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `program` run as root: directly when we are root, through sudo otherwise.
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    }
}

/// Makes sure every package and target is present.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("lab: installing Debian packages: {}", missing.join(" "));
        let st = privileged("apt-get")
            .args(["update", "-q"])
            .status()
            .context("apt-get update")?;
        if !st.success() {
            bail!("apt-get update failed");
        }
        let st = privileged("env")
            .args([
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
            ])
            .args(&missing)
            .status()
            .context("apt-get install")?;
        if !st.success() {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    let have = String::from_utf8_lossy(&listed.stdout).to_string();
    for t in RUST_TARGETS {
        if !have.lines().any(|l| l.trim() == *t) {
            eprintln!("lab: adding Rust target {t}");
            if !Command::new("rustup")
                .args(["target", "add", t])
                .status()?
                .success()
            {
                bail!("rustup target add {t} failed");
            }
        }
    }
    Ok(())
}
