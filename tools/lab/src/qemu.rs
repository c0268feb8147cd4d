//! One lab host: a QEMU process running Xen with dom0, whose serial console
//! goes to a file the lab follows line by line.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// What a host boots and how it is wired.
pub struct HostSpec<'a> {
    /// Index of the host in the run (0-based); also its address on the lab net.
    pub index: usize,
    /// Number of hosts in the run.
    pub hosts: usize,
    /// The scenario dom0 runs.
    pub scenario: &'a str,
    /// The Xen ELF (decompressed).
    pub xen: &'a Path,
    /// dom0's kernel image.
    pub kernel: &'a Path,
    /// dom0's initramfs.
    pub initrd: &'a Path,
    /// UDP multicast port of this run's lab network (unique per run).
    pub net_port: u16,
    /// Where the serial log goes.
    pub serial_log: PathBuf,
}

/// Memory of a lab host and of its dom0, MiB: enough for dom0, the appliance
/// and two small guests, no more (CI runs two of these on 2 cores).
const HOST_MEM_MIB: u32 = 2560;
const DOM0_MEM_MIB: u32 = 1024;

/// A running host.
pub struct Host {
    child: Child,
    log: PathBuf,
    offset: u64,
    partial: String,
    /// Whether the lab killed it on purpose.
    pub killed: bool,
}

impl Host {
    /// Starts QEMU for one host.
    pub fn spawn(spec: &HostSpec) -> Result<Host> {
        File::create(&spec.serial_log)?;
        let xen_cmdline = format!(
            "loglvl=warning guest_loglvl=all console=com1 com1=115200,8n1 noreboot \
             dom0_mem={DOM0_MEM_MIB}M,max:{DOM0_MEM_MIB}M dom0_max_vcpus=2"
        );
        let dom0_cmdline = format!(
            "{} console=hvc0 earlyprintk=xen loglevel=4 lab.host={} lab.hosts={} lab.scenario={}",
            spec.kernel.display(),
            spec.index,
            spec.hosts,
            spec.scenario
        );
        // Modules are passed as "path args,path": a comma separates modules.
        let modules = format!("{},{}", dom0_cmdline, spec.initrd.display());
        let netdev = format!(
            "socket,id=lab,mcast=230.0.0.1:{},localaddr=127.0.0.1",
            spec.net_port
        );
        let nic = format!("e1000,netdev=lab,mac=52:54:00:00:00:{:02x}", spec.index + 1);
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-smp", "2"])
            .args(["-m", &HOST_MEM_MIB.to_string()])
            .args(["-nographic", "-no-reboot", "-monitor", "none"])
            .arg("-kernel")
            .arg(spec.xen)
            .args(["-append", &xen_cmdline, "-initrd", &modules])
            .args(["-netdev", &netdev, "-device", &nic])
            .arg("-serial")
            .arg(format!("file:{}", spec.serial_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        Ok(Host {
            child,
            log: spec.serial_log.clone(),
            offset: 0,
            partial: String::new(),
            killed: false,
        })
    }

    /// Complete serial lines that arrived since the last call.
    pub fn new_lines(&mut self) -> Result<Vec<String>> {
        let mut f = File::open(&self.log)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            lines.push(
                line.trim_end_matches(['\n', '\r'])
                    .replace('\r', "")
                    .to_string(),
            );
        }
        Ok(lines)
    }

    /// Whether QEMU is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the QEMU process outright (a host failure, as the scenario asked).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}
