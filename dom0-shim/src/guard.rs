//! `resilire-shim guard`: the backup host's watchdog. It watches what the
//! appliance reports for each protected VM and, when a primary falls
//! silent, resumes the VM here from its last committed epoch.
//!
//! Split-brain stance:
//! - A primary that loses its backup keeps its guest running, unprotected
//!   and loudly, and re-synchronises when the backup returns: availability
//!   first, since the guest is still the only copy that runs.
//! - The backup takes over only when all of these hold: the appliance holds
//!   a committed epoch of the VM; nothing arrived for it for `missed`
//!   checkpoint intervals (and at least `min_silence`); if `--primary` is
//!   given, the primary's host does not answer on that second path either;
//!   and no domain of that name already runs here. A primary whose protect
//!   process died while its host stays reachable is reported, not taken
//!   over: a human (or a fencing cluster manager) decides.
//! - Without fencing, a partition that cuts both paths between two live
//!   hosts would leave two copies running. Closing that needs a third party
//!   (quorum, STONITH); the roadmap's Pacemaker agent is the place for it.

use crate::appliance::{self, CommittedFrames};
use crate::resume::{self, ResumeOptions};
use crate::xen::ForeignMemory;
use crate::xenstore::Xenstore;
use anyhow::Result;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// What `guard` is given.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// The appliance domain (name or id) on this host.
    pub appliance: String,
    /// Missed checkpoint intervals before a primary is declared dead.
    pub missed: u32,
    /// The shortest silence that counts, whatever the interval.
    pub min_silence: Duration,
    /// How often the appliance's status is read.
    pub poll: Duration,
    /// The primary host's address, probed before a takeover.
    pub primary: Option<String>,
    /// Resume with the hot set first.
    pub hot_first: bool,
    /// Stop after the first failover (scenarios and one-shot use).
    pub once: bool,
}

/// Where `status` finds the failovers this host performed.
pub const FAILOVER_DIR: &str = "/run/resilire/failover";

/// The interval assumed until the VM's restore state says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Watching,
    /// Silent before any commit: reported once.
    NoEpoch,
    /// Silent but its host answers: reported once.
    PrimaryAlive,
    /// Resumed here (or the resume failed): done with this VM.
    Done,
}

struct Watched {
    /// bytes_received, committed_epoch, last_heard_ms as last read.
    signature: (String, String, String),
    changed_at: Instant,
    interval: Option<Duration>,
    /// When the committed epoch last changed, and the smoothed time
    /// between commits: a loaded primary's epochs come slower than its
    /// interval, and silence is judged against the slower of the two.
    committed_at: Instant,
    period: Option<Duration>,
    verdict: Verdict,
}

/// Seconds since this host booted (the scenarios' clock too).
pub fn uptime_s() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Watches until killed (or, with `once`, until one failover is done).
pub fn run(o: &GuardOptions) -> Result<()> {
    let xs = Xenstore::open()?;
    let fm = ForeignMemory::open()?;
    let app = appliance::domid(&o.appliance)?;
    let vms_dir = format!("/local/domain/{app}/resilire/status/vms");
    println!(
        "guard: watching appliance {} (domain {app}); a primary is dead after {} missed intervals (at least {} ms){}",
        o.appliance,
        o.missed,
        o.min_silence.as_millis(),
        o.primary.as_deref().map(|p| format!(" and when {p} does not answer")).unwrap_or_default()
    );
    let mut watched: BTreeMap<String, Watched> = BTreeMap::new();
    loop {
        for vm in xs.directory(&vms_dir)? {
            let get = |k: &str| -> Result<String> { Ok(xs.read(&format!("{vms_dir}/{vm}/{k}"))?.unwrap_or_default()) };
            let signature = (get("bytes_received")?, get("committed_epoch")?, get("last_heard_ms")?);
            let now = Instant::now();
            let w = watched.entry(vm.clone()).or_insert_with(|| Watched {
                signature: signature.clone(),
                changed_at: now,
                interval: None,
                committed_at: now,
                period: None,
                verdict: Verdict::Watching,
            });
            if w.verdict == Verdict::Done {
                continue;
            }
            if w.signature != signature {
                if w.verdict != Verdict::Watching {
                    println!("guard: {vm}: the primary is heard from again");
                }
                if w.signature.1 != signature.1 && !w.signature.1.is_empty() {
                    let gap = now - w.committed_at;
                    w.period = Some(w.period.map_or(gap, |p| (p * 7 + gap) / 8));
                }
                if w.signature.1 != signature.1 {
                    w.committed_at = now;
                }
                w.signature = signature;
                w.changed_at = now;
                w.verdict = Verdict::Watching;
            }
            let committed = !w.signature.1.is_empty();
            if committed && w.interval.is_none() {
                w.interval = CommittedFrames::locate(&xs, &fm, app, &vm)
                    .and_then(|f| resume::read_state(&f))
                    .ok()
                    .map(|s| Duration::from_millis(u64::from(s.interval_ms.max(1))));
            }
            let interval = w.interval.unwrap_or(DEFAULT_INTERVAL).max(w.period.unwrap_or_default());
            let limit = (interval * o.missed).max(o.min_silence);
            let silent = now - w.changed_at;
            if silent < limit || w.verdict != Verdict::Watching {
                continue;
            }
            if !committed {
                println!(
                    "guard: {vm}: primary silent for {} ms during the initial synchronisation: no committed epoch, nothing to resume",
                    silent.as_millis()
                );
                w.verdict = Verdict::NoEpoch;
                continue;
            }
            if let Some(p) = &o.primary {
                if answers(p) {
                    println!(
                        "guard: {vm}: primary silent for {} ms but its host {p} answers: not taking over (split-brain guard)",
                        silent.as_millis()
                    );
                    w.verdict = Verdict::PrimaryAlive;
                    continue;
                }
            }
            let detected = uptime_s();
            println!(
                "guard: {vm}: FAILOVER: primary silent for {} ms (> {} epochs of {} ms), detected at {detected:.2} s; resuming from committed epoch {}",
                silent.as_millis(),
                o.missed,
                interval.as_millis(),
                w.signature.1
            );
            w.verdict = Verdict::Done;
            let r = resume::run(&ResumeOptions {
                vm: vm.clone(),
                appliance: o.appliance.clone(),
                hot_first: o.hot_first,
                paused: false,
            });
            let line = match &r {
                Ok(r) => format!(
                    "detected_at={detected:.2} resumed_at={:.2} epoch={} silence_ms={} {}",
                    uptime_s(),
                    r.epoch,
                    silent.as_millis(),
                    resume::describe(r)
                ),
                Err(e) => format!("detected_at={detected:.2} FAILED: {e:#}"),
            };
            println!("guard: {vm}: {line}");
            std::fs::create_dir_all(FAILOVER_DIR).ok();
            std::fs::write(format!("{FAILOVER_DIR}/{vm}"), format!("{line}\n")).ok();
            if o.once {
                return r.map(|_| ());
            }
        }
        std::thread::sleep(o.poll);
    }
}

/// Whether `host` answers a ping within a second (the second path).
fn answers(host: &str) -> bool {
    Command::new("ping")
        .args(["-c", "1", "-W", "1", host])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Prints the failovers this host performed, one line each.
pub fn print_status() -> Result<()> {
    let Ok(dir) = std::fs::read_dir(FAILOVER_DIR) else { return Ok(()) };
    for e in dir.flatten() {
        let line = std::fs::read_to_string(e.path()).unwrap_or_default();
        println!("failover {}: {}", e.file_name().to_string_lossy(), line.trim());
    }
    Ok(())
}
