//! The two initramfs images of the lab: dom0's (Xen tools, bridge, the shim,
//! the guest images, the scenario) and the test guest's (busybox, netfront,
//! the workload).

use crate::hostfacts::Kernel;
use crate::project::Artifacts;
use crate::rootfs::RootFs;
use anyhow::{Context, Result};
use std::path::Path;

/// dom0's modules: Xen's device interfaces, netback, the bridge, the NIC
/// QEMU emulates, and what output commit needs (sch_plug and ifb, plus the
/// ingress qdisc, the matchall classifier and the mirred action that steer a
/// guest vif's traffic into the ifb).
const DOM0_MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xenfs",
    "xen-netback",
    "bridge",
    "e1000",
    "sch_plug",
    "ifb",
    "sch_ingress",
    "cls_matchall",
    "act_mirred",
];

/// Xen tools dom0 runs, from Xen's private bin directory.
const XEN_TOOLS: &[&str] = &[
    "xl",
    "xenstored",
    "xen-init-dom0",
    "xenconsoled",
    "libxl-save-helper",
    "xen-hvmctx",
];

/// Names under which the `xenstore` multi-call binary is installed.
const XENSTORE_APPLETS: &[&str] = &[
    "read", "write", "ls", "list", "rm", "exists", "watch", "chmod",
];

fn busybox(fs: &mut RootFs) -> Result<()> {
    fs.file("/bin/busybox", "/bin/busybox")
        .context("busybox-static is needed")?;
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/usr/bin",
        "/usr/sbin",
        "/sbin",
        "/var",
        "/root",
    ] {
        fs.dir(d);
    }
    fs.symlink("/bin/sh", "busybox");
    Ok(())
}

/// Builds the test guest's initramfs.
pub fn guest_initramfs(root: &Path, kernel: &Kernel, art: &Artifacts, out: &Path) -> Result<u64> {
    let mut fs = RootFs::default();
    busybox(&mut fs)?;
    fs.modules(&kernel.version, &["xen-netfront"])?;
    fs.file(root.join("tests-qemu/guest/init"), "/init")?;
    fs.file(&art.workload, "/usr/bin/resilire-workload")?;
    fs.write_cpio(out)
}

/// Inputs of dom0's image besides the host's packages.
pub struct Dom0Inputs<'a> {
    /// The project root.
    pub root: &'a Path,
    /// The kernel dom0 and guests run.
    pub kernel: &'a Kernel,
    /// Xen's tool directory.
    pub xen_bin: &'a Path,
    /// The project's binaries.
    pub art: &'a Artifacts,
    /// The guest initramfs built before.
    pub guest_initrd: &'a Path,
}

/// Builds dom0's initramfs.
pub fn dom0_initramfs(inp: &Dom0Inputs, out: &Path) -> Result<u64> {
    let mut fs = RootFs::default();
    busybox(&mut fs)?;
    fs.modules(&inp.kernel.version, DOM0_MODULES)?;
    fs.file(inp.root.join("tests-qemu/dom0/init"), "/init")?;
    fs.file(inp.root.join("tests-qemu/dom0/lib.sh"), "/lab/lib.sh")?;
    fs.tree(&inp.root.join("tests-qemu/scenarios"), "/lab/scenarios")?;

    let xen_bin = inp.xen_bin.to_string_lossy().to_string();
    for tool in XEN_TOOLS {
        fs.binary(inp.xen_bin.join(tool), &format!("{xen_bin}/{tool}"))?;
    }
    fs.symlink("/usr/sbin/xl", &format!("{xen_bin}/xl"));
    fs.binary("/usr/bin/xenstore", "/usr/bin/xenstore")?;
    for a in XENSTORE_APPLETS {
        fs.symlink(&format!("/usr/bin/xenstore-{a}"), "xenstore");
    }
    // xl aborts at exit without libgcc_s (pthread_cancel unwinding).
    let libgcc = [
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .context("libgcc_s.so.1 not found")?;
    fs.file(libgcc, libgcc)?;
    fs.tree(Path::new("/etc/xen/scripts"), "/etc/xen/scripts")?;
    // dom0's memory is fixed by dom0_mem: xl must not balloon it down.
    fs.bytes("/etc/xen/xl.conf", 0o644, "autoballoon=\"off\"\n");
    fs.dir("/var/lib/xen");
    fs.dir("/var/log/xen/console");
    fs.symlink("/var/run", "/run");

    // The hotplug scripts are bash and use iproute2.
    fs.binary("/bin/bash", "/bin/bash")?;
    fs.binary(which("ip")?, "/usr/bin/ip")?;
    fs.binary(which("bridge")?, "/usr/bin/bridge")?;
    fs.binary(which("tc")?, "/usr/bin/tc")?;

    fs.binary(&inp.art.shim, "/usr/bin/resilire-shim")?;
    // Captured real-memory sets, packed (a few MB); scenarios unpack them
    // with `resilire-capture unpack /lab/captures/<set> <dir>`.
    fs.binary(&inp.art.capture, "/usr/bin/resilire-capture")?;
    fs.tree(&inp.root.join("tools/capture/data"), "/lab/captures")?;
    if let Some(app) = &inp.art.appliance {
        fs.file(app, "/usr/lib/resilire/resilire-appliance")?;
    }
    fs.file(&inp.kernel.image, "/lab/guest/vmlinuz")?;
    fs.file(inp.guest_initrd, "/lab/guest/initrd")?;
    fs.write_cpio(out)
}

fn which(tool: &str) -> Result<std::path::PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!("{tool} not found on the host")
}
