//! `resilire-shim appliance start|stop|status`: runs the backup appliance
//! domain on this host. The configuration schema is the appliance's
//! (appliance/CONFIG.md): keys under `/local/domain/<id>/resilire/config/`,
//! owned by dom0 and readable by the appliance only; the appliance reports
//! under `.../resilire/status/`.

use crate::xen::ForeignMemory;
use crate::xenstore::Xenstore;
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where dom0 installs the appliance image by default.
pub const DEFAULT_KERNEL: &str = "/usr/lib/resilire/resilire-appliance";

/// What `appliance start` is given.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Domain name.
    pub name: String,
    /// The appliance ELF.
    pub kernel: String,
    /// Domain memory, MiB.
    pub memory_mib: u32,
    /// Bridge of the appliance's vif.
    pub bridge: String,
    /// Config keys and values (relative to the config directory).
    pub config: Vec<(String, String)>,
    /// How long to wait for the appliance to report.
    pub wait: Duration,
}

fn xl(args: &[&str]) -> Result<String> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .context("running xl")?;
    if !out.status.success() {
        bail!(
            "xl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The domain id of a running domain, by name.
pub fn domid(name: &str) -> Result<u32> {
    let out = xl(&["domid", name]).with_context(|| format!("no domain {name}"))?;
    out.trim()
        .parse()
        .with_context(|| format!("xl domid printed {out:?}"))
}

fn xl_config(o: &StartOptions) -> String {
    format!(
        "name = \"{}\"\ntype = \"pv\"\nkernel = \"{}\"\nmemory = {}\nmaxmem = {}\nvcpus = 1\n\
         vif = [ \"bridge={}\" ]\non_poweroff = \"destroy\"\non_reboot = \"restart\"\non_crash = \"preserve\"\n",
        o.name, o.kernel, o.memory_mib, o.memory_mib, o.bridge
    )
}

/// Creates the appliance paused, writes its configuration, lets it run and
/// waits until it reports ready (or misconfigured, with its reason).
pub fn start(o: &StartOptions) -> Result<()> {
    let dir = std::path::Path::new("/run/resilire");
    std::fs::create_dir_all(dir)?;
    let cfg_path = dir.join(format!("{}.cfg", o.name));
    std::fs::write(&cfg_path, xl_config(o))?;
    xl(&["create", "-p", &cfg_path.to_string_lossy()])?;
    let id = domid(&o.name)?;
    let xs = Xenstore::open()?;
    let base = format!("/local/domain/{id}/resilire");
    // Config: dom0 owns it, the appliance may only read it. Status: the
    // appliance owns it. Children inherit the permissions of their parent
    // at creation, so the directories are made and restricted first.
    xs.write(&format!("{base}/config"), "")?;
    xs.restrict(&format!("{base}/config"), 0, id)?;
    xs.write(&format!("{base}/config/keys"), "")?;
    xs.restrict(&format!("{base}/config/keys"), 0, id)?;
    xs.write(&format!("{base}/status"), "")?;
    xs.restrict(&format!("{base}/status"), id, 0)?;
    let nodes: Vec<(String, String)> = o
        .config
        .iter()
        .map(|(k, v)| (format!("{base}/config/{k}"), v.clone()))
        .collect();
    xs.write_all(&nodes)?;
    xl(&["unpause", &o.name])?;
    println!(
        "appliance {} started as domain {id} ({} MiB)",
        o.name, o.memory_mib
    );
    let t0 = Instant::now();
    loop {
        let state = xs.read(&format!("{base}/status/state"))?;
        match state.as_deref() {
            Some("ready") | Some("misconfigured") => {
                println!(
                    "appliance {} reported {} after {:.2}s",
                    o.name,
                    state.unwrap_or_default(),
                    t0.elapsed().as_secs_f64()
                );
                return print_status(&xs, id);
            }
            _ if t0.elapsed() > o.wait => {
                bail!(
                    "appliance {} did not report ready within {:?} (state {:?})",
                    o.name,
                    o.wait,
                    state
                )
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Prints the appliance's status nodes, one `key: value` a line.
pub fn print_status(xs: &Xenstore, id: u32) -> Result<()> {
    let dir = format!("/local/domain/{id}/resilire/status");
    let keys = xs.directory(&dir)?;
    if keys.is_empty() {
        println!("status: (nothing reported yet)");
    }
    for k in keys {
        println!(
            "status/{k}: {}",
            xs.read(&format!("{dir}/{k}"))?.unwrap_or_default()
        );
    }
    Ok(())
}

/// `appliance status`.
pub fn status(name: &str) -> Result<()> {
    let id = domid(name)?;
    println!("appliance {name}: domain {id}");
    print_status(&Xenstore::open()?, id)
}

/// `appliance stop`: a clean shutdown, waited for; destroyed if it hangs.
pub fn stop(name: &str, wait: Duration) -> Result<()> {
    let id = domid(name)?;
    xl(&["shutdown", name])?;
    let t0 = Instant::now();
    while t0.elapsed() < wait {
        if domid(name).map(|d| d != id).unwrap_or(true) {
            println!(
                "appliance {name} (domain {id}) shut down cleanly in {:.2}s",
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    xl(&["destroy", name])?;
    bail!("appliance {name} ignored the shutdown request for {wait:?}; destroyed")
}

/// A VM's committed image as read out of the appliance.
pub struct CommittedImage {
    /// The epoch it holds.
    pub epoch: u64,
    /// The pages, in pfn order.
    pub bytes: Vec<u8>,
}

/// Frame numbers of a page directory, as the appliance publishes them in
/// xenstore: decimal or 0x-hex, separated by commas or spaces.
pub fn parse_frame_list(text: &str) -> Result<Vec<u64>> {
    text.split([',', ' ', '\n'])
        .filter(|s| !s.is_empty())
        .map(|s| {
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .with_context(|| format!("bad frame number {s:?} in the page directory"))
        })
        .collect()
}

/// VM `vm`'s committed image inside appliance domain `app`, located by the
/// page directory the appliance publishes (each directory frame: 512
/// little-endian machine frame numbers, in pfn order). The appliance is a PV
/// domain, so its frames are mapped by machine frame number; only a
/// privileged domain (dom0) can do this.
pub struct CommittedFrames<'a> {
    fm: &'a ForeignMemory,
    app: u32,
    /// The epoch the image holds.
    pub epoch: u64,
    frames: Vec<u64>,
}

/// What the appliance says about a VM it holds no committed epoch of.
pub const NOTHING_COMMITTED: &str = "holds no committed epoch";

impl<'a> CommittedFrames<'a> {
    /// Reads the directory. Fails, saying so, when the appliance holds no
    /// committed epoch of `vm`; retries when a new epoch is published while
    /// the directory is read.
    pub fn locate(xs: &Xenstore, fm: &'a ForeignMemory, app: u32, vm: &str) -> Result<Self> {
        let base = format!("/local/domain/{app}/resilire/status/vms/{vm}");
        let get = |k: &str| -> Result<String> {
            Ok(xs.read(&format!("{base}/{k}"))?.unwrap_or_default())
        };
        for _ in 0..10 {
            let epoch = get("committed_epoch")?;
            let dir = get("pagedir")?;
            let pages = get("pages")?;
            if epoch.trim().is_empty() || dir.trim().is_empty() {
                bail!(
                    "appliance domain {app} {NOTHING_COMMITTED} of VM {vm} (state: {})",
                    get("state")?
                );
            }
            let pages: usize = pages.trim().parse().context("pages")?;
            let epoch: u64 = epoch.trim().parse().context("committed_epoch")?;
            let dir_frames = parse_frame_list(&dir)?;
            if dir_frames.len() != pages.div_ceil(512) {
                bail!(
                    "page directory has {} frames for {pages} pages",
                    dir_frames.len()
                );
            }
            let map = fm.map(app, &dir_frames)?;
            let mut frames = Vec::with_capacity(pages);
            for (i, f) in dir_frames.iter().enumerate() {
                let page = map
                    .page(i)
                    .with_context(|| format!("directory frame {f:#x} does not map"))?;
                for e in page.chunks_exact(8).take(pages - frames.len()) {
                    frames.push(u64::from_le_bytes(e.try_into().expect("8 bytes")));
                }
            }
            // The appliance frees a directory after publishing the next one:
            // what was read counts only if it is still the published one.
            if get("pagedir")? == dir {
                return Ok(CommittedFrames {
                    fm,
                    app,
                    epoch,
                    frames,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("appliance domain {app} kept publishing new epochs of {vm} while its directory was read")
    }

    /// Pages in the image.
    pub fn pages(&self) -> usize {
        self.frames.len()
    }

    /// Copies the whole image out.
    pub fn read_all(&self) -> Result<CommittedImage> {
        let mut bytes = Vec::with_capacity(self.pages() * 4096);
        let all: Vec<u64> = (0..self.pages() as u64).collect();
        self.copy_slots(&all, &mut |p| {
            bytes.extend_from_slice(p);
            Ok(())
        })?;
        Ok(CommittedImage {
            epoch: self.epoch,
            bytes,
        })
    }

    /// Maps the pages of `slots` (1024 at a time) and hands each to `f` in
    /// order.
    pub fn copy_slots(
        &self,
        slots: &[u64],
        f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        for batch in slots.chunks(1024) {
            let frames: Vec<u64> = batch
                .iter()
                .map(|&s| {
                    self.frames
                        .get(s as usize)
                        .copied()
                        .with_context(|| format!("slot {s} beyond the image"))
                })
                .collect::<Result<_>>()?;
            let m = self.fm.map(self.app, &frames)?;
            for (i, fr) in frames.iter().enumerate() {
                f(m.page(i)
                    .with_context(|| format!("image frame {fr:#x} does not map"))?)?;
            }
        }
        Ok(())
    }
}

impl crate::restore_stream::PageSource for CommittedFrames<'_> {
    fn for_each_page(
        &mut self,
        slots: &[u64],
        f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        self.copy_slots(slots, f)
    }
}

/// Reads VM `vm`'s committed image out of appliance domain `app` (see
/// [`CommittedFrames`]).
pub fn read_committed_image(
    xs: &Xenstore,
    fm: &ForeignMemory,
    app: u32,
    vm: &str,
) -> Result<CommittedImage> {
    CommittedFrames::locate(xs, fm, app, vm)?.read_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn frame_lists_parse_in_both_bases() {
        assert_eq!(
            super::parse_frame_list("12,0x1f 7").unwrap(),
            vec![12, 31, 7]
        );
        assert!(super::parse_frame_list("12,zz").is_err());
    }

    use super::*;

    #[test]
    fn xl_config_is_a_pv_domain_with_fixed_memory() {
        let o = StartOptions {
            name: "app".into(),
            kernel: "/k".into(),
            memory_mib: 96,
            bridge: "xenbr0".into(),
            config: vec![],
            wait: Duration::from_secs(1),
        };
        let c = xl_config(&o);
        assert!(c.contains("type = \"pv\""));
        assert!(c.contains("memory = 96\nmaxmem = 96"));
        assert!(c.contains("bridge=xenbr0"));
    }
}
