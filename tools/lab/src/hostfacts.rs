//! What the lab reads off the machine at run time rather than hard-coding:
//! the Debian kernel that dom0 and the guests run, and the Xen hypervisor.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The newest installed Debian kernel: its version and image.
pub struct Kernel {
    /// Version string, e.g. "6.1.0-56-amd64".
    pub version: String,
    /// `/boot/vmlinuz-<version>`.
    pub image: PathBuf,
}

/// Finds the newest kernel that has both an image and a module tree.
pub fn kernel() -> Result<Kernel> {
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .filter(|v| PathBuf::from(format!("/lib/modules/{v}/modules.dep")).exists())
        .collect();
    versions.sort_by_key(|a| version_key(a));
    match versions.pop() {
        Some(version) => Ok(Kernel {
            image: PathBuf::from(format!("/boot/vmlinuz-{version}")),
            version,
        }),
        None => bail!("no kernel with modules in /boot (is linux-image-amd64 installed?)"),
    }
}

/// Numeric fields of a version, compared field by field ("6.1.0-56" > "6.1.0-9").
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The gzip-compressed Xen hypervisor of the newest installed 4.x package.
pub fn xen_gz() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("xen-") && n.ends_with("-amd64.gz")
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("no /boot/xen-*-amd64.gz (is xen-hypervisor installed?)")
}

/// The directory of Xen's tool binaries (`/usr/lib/xen-<ver>/bin`).
pub fn xen_bin_dir() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xen-4"))
        })
        .map(|p| p.join("bin"))
        .filter(|p| p.join("xl").exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no /usr/lib/xen-4.*/bin/xl (is xen-utils installed?)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions_compare_numerically() {
        assert!(super::version_key("6.1.0-56-amd64") > super::version_key("6.1.0-9-amd64"));
        assert!(super::version_key("6.10.0-1-amd64") > super::version_key("6.9.0-1-amd64"));
    }
}
