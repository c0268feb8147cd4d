//! `resilire-shim resume`: brings a protected VM back on this host from the
//! last epoch its appliance committed (VMresume).
//!
//! The committed image is mapped out of the appliance (foreign mapping, as
//! the page directory says) and streamed as an xl save file straight into
//! `xl restore -p` through a pipe: no temporary file, no second copy of the
//! guest's memory in dom0. The restore state (registers, params, TSC, CPU
//! policies, domain config) comes from the image's own trailer, so memory
//! and state are always of the same committed epoch. Pages the guest wrote
//! in its last epochs go first (the hot set): with Xen's eager restore the
//! guest starts only once every page is in, so today the order buys
//! nothing measurable; it is the order a lazy (post-copy) restore needs.

use crate::appliance::{self, CommittedFrames};
use crate::restore_stream::{restore_order, write_save_file};
use crate::vmstate::{VmState, TRAILER_PAGES};
use crate::xen::{ForeignMemory, XenCtrl};
use crate::xenstore::Xenstore;
use anyhow::{bail, ensure, Context, Result};
use std::io::BufWriter;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `resume` is given.
#[derive(Debug, Clone)]
pub struct ResumeOptions {
    /// The protected VM's name (as the appliance knows it).
    pub vm: String,
    /// The appliance domain (name or id) on this host.
    pub appliance: String,
    /// Send the hot set first (default) or plainly by frame.
    pub hot_first: bool,
    /// Leave the restored domain paused.
    pub paused: bool,
}

/// What a resume did and how long each step took.
#[derive(Debug, Clone)]
pub struct ResumeReport {
    /// The committed epoch the VM resumed from.
    pub epoch: u64,
    /// Its domain id on this host.
    pub domid: u32,
    /// The domain's name.
    pub name: String,
    /// Guest pages restored.
    pub pages: usize,
    /// Bytes of the save stream.
    pub stream_bytes: u64,
    /// Finding the image and reading its restore state.
    pub locate: Duration,
    /// Streaming into `xl restore` until it returned.
    pub restore: Duration,
    /// Unpausing.
    pub unpause: Duration,
}

impl ResumeReport {
    /// From the start of the resume until the guest runs.
    pub fn total(&self) -> Duration {
        self.locate + self.restore + self.unpause
    }
}

/// Where `xl restore`'s own output goes.
const XL_LOG_DIR: &str = "/var/log/resilire";

/// Resumes the VM. Fails clearly, touching nothing, when the appliance
/// holds no committed epoch of it or a domain of that name already runs
/// here.
pub fn run(o: &ResumeOptions) -> Result<ResumeReport> {
    let t0 = Instant::now();
    let xs = Xenstore::open()?;
    let fm = ForeignMemory::open()?;
    let xc = XenCtrl::open()?;
    let app = appliance::domid(&o.appliance)?;
    let mut frames = CommittedFrames::locate(&xs, &fm, app, &o.vm)
        .with_context(|| format!("no resume of {}: nothing to resume from", o.vm))?;
    let state = read_state(&frames)?;
    let name = domain_name(&state)?;
    if let Some(d) = domain_named(&xc, &xs, &name)? {
        bail!(
            "a domain named {name} already runs here (domain {d}): refusing to start a second copy"
        );
    }
    let order = restore_order(&state, o.hot_first);
    let locate = t0.elapsed();

    let t1 = Instant::now();
    std::fs::create_dir_all(XL_LOG_DIR).ok();
    let log_path = format!("{XL_LOG_DIR}/restore-{}.log", o.vm);
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {log_path}"))?;
    // Without -e, xl leaves a child behind that watches the domain (reboot,
    // crash actions) as after `xl create`; its output goes to the log.
    let mut xl = Command::new("xl")
        .args(["restore", "-p", "/proc/self/fd/0"])
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting xl restore")?;
    let stdin = xl.stdin.take().context("xl restore's stdin")?;
    let mut pipe = BufWriter::with_capacity(1 << 20, stdin);
    let written = write_save_file(&mut pipe, &state, xc.version()?, &order, &mut frames);
    drop(pipe);
    let status = xl.wait().context("waiting for xl restore")?;
    let xl_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "xl restore failed ({status}); its log ({log_path}):\n{}",
            tail(&xl_log, 20)
        );
    }
    let stream_bytes =
        written.with_context(|| format!("streaming the image; xl said:\n{}", tail(&xl_log, 20)))?;
    let restore = t1.elapsed();
    let domid = domain_named(&xc, &xs, &name)?
        .with_context(|| format!("xl restore returned but no domain {name}"))?;

    let t2 = Instant::now();
    if !o.paused {
        xl_cmd(&["unpause", &domid.to_string()])?;
    }
    Ok(ResumeReport {
        epoch: frames.epoch,
        domid,
        name,
        pages: state.layout.len(),
        stream_bytes,
        locate,
        restore,
        unpause: t2.elapsed(),
    })
}

/// One line for logs and the terminal.
pub fn describe(r: &ResumeReport) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "resume: {} running as domain {} from committed epoch {}: {} pages, {:.1} MiB streamed; locate {:.0} ms, xl restore {:.0} ms, unpause {:.0} ms, total {:.0} ms",
        r.name,
        r.domid,
        r.epoch,
        r.pages,
        r.stream_bytes as f64 / (1 << 20) as f64,
        ms(r.locate),
        ms(r.restore),
        ms(r.unpause),
        ms(r.total())
    )
}

/// Reads and checks the restore state from the image's trailer.
pub fn read_state(frames: &CommittedFrames) -> Result<VmState> {
    let pages = frames.pages();
    ensure!(
        pages > TRAILER_PAGES,
        "the committed image has {pages} pages: no room for a restore state"
    );
    let slots: Vec<u64> = (pages - TRAILER_PAGES..pages).map(|s| s as u64).collect();
    let mut trailer = Vec::with_capacity(TRAILER_PAGES * 4096);
    frames.copy_slots(&slots, &mut |p| {
        trailer.extend_from_slice(p);
        Ok(())
    })?;
    let state = VmState::decode(&trailer)?;
    ensure!(
        state.layout.len() + TRAILER_PAGES == pages,
        "restore state lists {} frames but the image holds {} pages",
        state.layout.len(),
        pages - TRAILER_PAGES
    );
    Ok(state)
}

/// The domain name in the restore state's configuration.
pub fn domain_name(state: &VmState) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&state.config_json).context("domain config")?;
    v.pointer("/c_info/name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .context("domain config has no name")
}

/// The live domain called `name` on this host, if any.
pub fn domain_named(xc: &XenCtrl, xs: &Xenstore, name: &str) -> Result<Option<u32>> {
    for d in xc.domains()? {
        if !d.dying
            && xs
                .read(&format!("/local/domain/{}/name", d.domid))?
                .as_deref()
                == Some(name)
        {
            return Ok(Some(d.domid));
        }
    }
    Ok(None)
}

fn xl_cmd(args: &[&str]) -> Result<()> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .with_context(|| format!("running xl {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "xl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
