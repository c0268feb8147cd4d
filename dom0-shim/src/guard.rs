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

/// Silence that counts before the first commit: an initial
/// synchronisation has gaps of its own (copy rounds, a loaded primary), and
/// nothing is resumed then anyway; this only decides when to say so.
const SYNC_SILENCE: Duration = Duration::from_secs(15);

/// How often a silent primary whose host still answered is probed again.
const RECHECK: Duration = Duration::from_secs(5);

/// The interval assumed until the VM's restore state says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Watching,
    /// Silent before any commit: reported once.
    NoEpoch,
    /// Silent but its host answered at this time: reported once, asked
    /// again every [`RECHECK`].
    PrimaryAlive(Instant),
    /// Resumed here (or the resume failed): done with this VM.
    Done,
}

/// What the appliance reports about one VM, as far as liveness goes:
/// bytes received, committed epoch, last heard (any change is a sign of
/// life), and its state (a change, such as the appliance closing a dead
/// connection, starts the count again: a verdict is then taken afresh).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signs {
    /// `bytes_received`.
    pub bytes: String,
    /// `committed_epoch` (empty: nothing committed yet).
    pub epoch: String,
    /// `last_heard_ms`.
    pub heard: String,
    /// `state`.
    pub state: String,
}

/// One VM's liveness as the guard tracks it (no I/O: tested on the host).
#[derive(Debug, Clone)]
pub struct Tracker {
    signs: Signs,
    changed_at: Instant,
    /// The primary's checkpoint interval, from the restore state.
    interval: Option<Duration>,
    /// The last gaps between changes of the signs: a loaded primary's
    /// epochs come slower than its interval, and silence is judged against
    /// the slower of the interval and the median gap (a median, so that one
    /// long pause does not count). Any sign counts, not only commits: a
    /// primary whose epochs are bound by the wire moves `bytes_received` at
    /// every status update while a commit takes seconds, and is judged by
    /// that pace.
    gaps: std::collections::VecDeque<Duration>,
    verdict: Verdict,
}

/// Gaps kept; their median is the primary's pace.
const GAPS: usize = 8;

/// What the guard should do about a VM after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Nothing (alive, or already reported).
    Wait,
    /// The primary came back after a report.
    HeardAgain,
    /// Silent this long with nothing committed: report, do not resume.
    SilentWithoutEpoch(Duration),
    /// Silent this long with an epoch committed, judged against this pace
    /// (the slower of the interval and the median gap between signs of
    /// life): a candidate for takeover.
    Dead(Duration, Duration),
}

impl Tracker {
    /// Starts tracking at `now` (silence counts from here).
    pub fn new(signs: Signs, now: Instant) -> Tracker {
        Tracker {
            signs,
            changed_at: now,
            interval: None,
            gaps: std::collections::VecDeque::new(),
            verdict: Verdict::Watching,
        }
    }

    fn median_gap(&self) -> Duration {
        let mut g: Vec<Duration> = self.gaps.iter().copied().collect();
        g.sort();
        g.get(g.len() / 2).copied().unwrap_or_default()
    }

    /// Whether an epoch is committed.
    pub fn committed(&self) -> bool {
        !self.signs.epoch.is_empty()
    }

    /// The committed epoch as reported.
    pub fn epoch(&self) -> &str {
        &self.signs.epoch
    }

    /// Records the primary's checkpoint interval.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = Some(interval);
    }

    /// Whether the interval is known.
    pub fn has_interval(&self) -> bool {
        self.interval.is_some()
    }

    /// Takes one observation and says what to do.
    pub fn observe(
        &mut self,
        signs: Signs,
        now: Instant,
        missed: u32,
        min_silence: Duration,
    ) -> Call {
        if self.verdict == Verdict::Done {
            return Call::Wait;
        }
        let mut call = Call::Wait;
        if self.signs != signs {
            if self.verdict != Verdict::Watching {
                call = Call::HeardAgain;
            }
            if self.committed() {
                self.gaps.push_back(now - self.changed_at);
                if self.gaps.len() > GAPS {
                    self.gaps.pop_front();
                }
            }
            self.signs = signs;
            self.changed_at = now;
            self.verdict = Verdict::Watching;
        }
        let period = self
            .interval
            .unwrap_or(DEFAULT_INTERVAL)
            .max(self.median_gap());
        let silent = now - self.changed_at;
        let mut limit = (period * missed).max(min_silence);
        if !self.committed() {
            limit = limit.max(SYNC_SILENCE);
        }
        match self.verdict {
            Verdict::Watching if silent >= limit => {}
            Verdict::PrimaryAlive(at) if now - at >= RECHECK => {}
            _ => return call,
        }
        if self.committed() {
            Call::Dead(silent, period)
        } else {
            Call::SilentWithoutEpoch(silent)
        }
    }

    /// The primary is silent but its host answers: left alone, probed
    /// again later. Returns whether this is news (to be reported).
    pub fn primary_alive(&mut self, now: Instant) -> bool {
        let news = !matches!(self.verdict, Verdict::PrimaryAlive(_));
        self.verdict = Verdict::PrimaryAlive(now);
        news
    }

    /// Silent before any commit and its host is gone: said once.
    pub fn no_epoch(&mut self) {
        self.verdict = Verdict::NoEpoch;
    }

    /// Taken over (or tried to): the guard is done with this VM.
    pub fn done(&mut self) {
        self.verdict = Verdict::Done;
    }
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
    let mut watched: BTreeMap<String, Tracker> = BTreeMap::new();
    loop {
        for vm in xs.directory(&vms_dir)? {
            let get = |k: &str| -> Result<String> {
                Ok(xs.read(&format!("{vms_dir}/{vm}/{k}"))?.unwrap_or_default())
            };
            let signs = Signs {
                bytes: get("bytes_received")?,
                epoch: get("committed_epoch")?,
                heard: get("last_heard_ms")?,
                state: get("state")?,
            };
            let now = Instant::now();
            let w = watched
                .entry(vm.clone())
                .or_insert_with(|| Tracker::new(signs.clone(), now));
            if w.committed() && !w.has_interval() {
                if let Ok(state) =
                    CommittedFrames::locate(&xs, &fm, app, &vm).and_then(|f| resume::read_state(&f))
                {
                    w.set_interval(Duration::from_millis(u64::from(state.interval_ms.max(1))));
                }
            }
            let (silent, period) = match w.observe(signs, now, o.missed, o.min_silence) {
                Call::Wait => continue,
                Call::HeardAgain => {
                    println!("guard: {vm}: the primary is heard from again");
                    continue;
                }
                Call::SilentWithoutEpoch(silent) => {
                    if let Some(p) = o.primary.as_deref().filter(|p| answers(p)) {
                        if w.primary_alive(now) {
                            println!(
                                "guard: {vm}: primary silent for {} ms during the initial synchronisation; its host {p} answers",
                                silent.as_millis()
                            );
                        }
                        continue;
                    }
                    w.no_epoch();
                    println!(
                        "guard: {vm}: primary silent for {} ms during the initial synchronisation: no committed epoch, nothing to resume",
                        silent.as_millis()
                    );
                    continue;
                }
                Call::Dead(silent, period) => (silent, period),
            };
            if let Some(p) = &o.primary {
                if answers(p) {
                    if w.primary_alive(now) {
                        println!(
                            "guard: {vm}: primary silent for {} ms but its host {p} answers: not taking over (split-brain guard)",
                            silent.as_millis()
                        );
                    }
                    continue;
                }
            }
            let detected = uptime_s();
            println!(
                "guard: {vm}: FAILOVER: primary silent for {} ms (> {} x its pace of {} ms), detected at {detected:.2} s; resuming from committed epoch {}",
                silent.as_millis(),
                o.missed,
                period.as_millis(),
                w.epoch()
            );
            w.done();
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
    let Ok(dir) = std::fs::read_dir(FAILOVER_DIR) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let line = std::fs::read_to_string(e.path()).unwrap_or_default();
        println!(
            "failover {}: {}",
            e.file_name().to_string_lossy(),
            line.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signs(bytes: u32, epoch: &str) -> Signs {
        Signs {
            bytes: bytes.to_string(),
            epoch: epoch.into(),
            heard: String::new(),
            state: "protected".into(),
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_live_primary_is_never_dead_and_a_silent_one_is_after_missed_intervals() {
        let t0 = Instant::now();
        let mut t = Tracker::new(signs(0, ""), t0);
        t.set_interval(MS(200));
        for i in 1..=20u32 {
            let call = t.observe(
                signs(i * 1000, &i.to_string()),
                t0 + MS(u64::from(i) * 200),
                5,
                MS(1000),
            );
            assert_eq!(call, Call::Wait, "epoch {i}");
        }
        let last = t0 + MS(4000);
        assert_eq!(
            t.observe(signs(20_000, "20"), last + MS(999), 5, MS(1000)),
            Call::Wait
        );
        match t.observe(signs(20_000, "20"), last + MS(1001), 5, MS(1000)) {
            Call::Dead(silent, period) => {
                assert!(silent >= MS(1000) && period == MS(200), "{period:?}")
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn silence_before_the_first_commit_is_reported_once_and_never_resumed() {
        let t0 = Instant::now();
        let mut t = Tracker::new(signs(5, ""), t0);
        assert_eq!(
            t.observe(signs(5, ""), t0 + MS(2000), 5, MS(1000)),
            Call::Wait,
            "a sync has gaps"
        );
        assert_eq!(
            t.observe(signs(5, ""), t0 + SYNC_SILENCE, 5, MS(1000)),
            Call::SilentWithoutEpoch(SYNC_SILENCE)
        );
        t.no_epoch();
        assert_eq!(
            t.observe(signs(5, ""), t0 + MS(30_000), 5, MS(1000)),
            Call::Wait
        );
        // A returning primary is noticed.
        assert_eq!(
            t.observe(signs(6, ""), t0 + MS(30_100), 5, MS(1000)),
            Call::HeardAgain
        );
    }

    #[test]
    fn a_slow_primary_is_judged_by_its_real_epoch_period() {
        let t0 = Instant::now();
        let mut t = Tracker::new(signs(0, "1"), t0);
        t.set_interval(MS(100));
        // Epochs every 800 ms although the interval says 100 ms.
        for i in 1..=10u64 {
            assert_eq!(
                t.observe(
                    signs(i as u32, &(i + 1).to_string()),
                    t0 + MS(i * 800),
                    5,
                    MS(500)
                ),
                Call::Wait
            );
        }
        // 2 s of silence: 5 intervals of 100 ms, but not 5 periods of ~800 ms.
        assert_eq!(
            t.observe(signs(10, "11"), t0 + MS(8000 + 2000), 5, MS(500)),
            Call::Wait
        );
        assert!(matches!(
            t.observe(signs(10, "11"), t0 + MS(8000 + 4500), 5, MS(500)),
            Call::Dead(..)
        ));
    }

    #[test]
    fn a_primary_streaming_long_epochs_is_judged_by_its_bytes() {
        let t0 = Instant::now();
        let mut t = Tracker::new(signs(0, "1"), t0);
        t.set_interval(MS(200));
        // Commits every 6 s (37 MB epochs over a slow wire), bytes moving at
        // every status update (1 s).
        for s in 1..=30u64 {
            let epoch = (1 + s / 6).to_string();
            assert_eq!(
                t.observe(
                    signs(s as u32 * 1000, &epoch),
                    t0 + MS(s * 1000),
                    5,
                    MS(1000)
                ),
                Call::Wait
            );
        }
        let last = t0 + MS(30_000);
        assert_eq!(
            t.observe(signs(30_000, "6"), last + MS(4900), 5, MS(1000)),
            Call::Wait
        );
        match t.observe(signs(30_000, "6"), last + MS(5100), 5, MS(1000)) {
            Call::Dead(_, period) => assert_eq!(period, MS(1000)),
            c => panic!("not judged by the bytes' pace: {c:?}"),
        }
    }

    #[test]
    fn one_long_epoch_does_not_slow_detection_down() {
        let t0 = Instant::now();
        let mut t = Tracker::new(signs(0, "1"), t0);
        t.set_interval(MS(200));
        let mut at = MS(100_000); // the first epoch after a long sync
        assert_eq!(t.observe(signs(1, "2"), t0 + at, 5, MS(1000)), Call::Wait);
        for i in 3..12u32 {
            at += MS(200);
            assert_eq!(
                t.observe(signs(i, &i.to_string()), t0 + at, 5, MS(1000)),
                Call::Wait
            );
        }
        assert!(matches!(
            t.observe(signs(11, "11"), t0 + at + MS(1001), 5, MS(1000)),
            Call::Dead(..)
        ));
    }

    #[test]
    fn after_a_takeover_or_a_live_host_the_guard_stays_quiet() {
        let t0 = Instant::now();
        let mut t = Tracker::new(signs(1, "3"), t0);
        assert!(matches!(
            t.observe(signs(1, "3"), t0 + MS(5000), 5, MS(1000)),
            Call::Dead(..)
        ));
        assert!(t.primary_alive(t0 + MS(5000)));
        assert_eq!(
            t.observe(signs(1, "3"), t0 + MS(9000), 5, MS(1000)),
            Call::Wait
        );
        // Asked again after RECHECK: the host may be gone by now.
        assert!(matches!(
            t.observe(signs(1, "3"), t0 + MS(10_001), 5, MS(1000)),
            Call::Dead(..)
        ));
        assert!(!t.primary_alive(t0 + MS(10_001)), "reported once");
        t.done();
        assert_eq!(
            t.observe(signs(2, "4"), t0 + MS(9500), 5, MS(1000)),
            Call::Wait
        );
    }
}
