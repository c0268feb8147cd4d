//! `resilire-shim protect`: the primary's protection loop. Initial
//! synchronisation (live pre-copy rounds staged into the first epoch, then a
//! consistent final round and COMMIT), then one cooperative checkpoint per
//! interval, each shipped and acknowledged before the next. If the backup
//! goes away the guest keeps running unprotected, loudly, and protection
//! restarts with a fresh synchronisation when the backup is back.
//!
//! Output commit (see [`crate::output_commit`]): a barrier is put into the
//! guest's outgoing packet queue at each suspend point and the epoch's
//! packets are released when its ACK arrives; unprotected or stopping, the
//! queue is released for good.
//!
//! Figures: each epoch is one line on stdout, one line appended to the
//! epoch log (`--log`, default `/var/log/resilire/protect-<vm>.log`), and
//! the VM's line of `resilire-shim status` (a file under [`STATUS_DIR`]).

use crate::checkpoint::{median_p99, Checkpointer, Epoch, PAGE};
use crate::output_commit::{self, OutputCommit};
use crate::progress::Progress;
use crate::ship::{EpochStats, Shipper, VmIdentity};
use crate::xen::{ForeignMemory, XenCtrl};
use crate::xenstore::Xenstore;
use anyhow::{Context, Result};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What `protect` is given.
pub struct ProtectOptions {
    /// Domain id.
    pub domid: u32,
    /// Its name (the appliance knows its key by it).
    pub name: String,
    /// The appliance, ip:port.
    pub backup: String,
    /// The VM's key.
    pub key: [u8; 32],
    /// Checkpoint interval.
    pub interval: Duration,
    /// Stop after this many epochs (None: run until killed).
    pub epochs: Option<u64>,
    /// Codec block size.
    pub block_size: usize,
    /// At the end, ship a last epoch with the guest held at its suspend
    /// point and compare the backup's committed image (read back through
    /// the protocol) with the guest's memory, byte for byte.
    pub final_check: bool,
    /// Hold the guest's outgoing packets until their epoch is acknowledged
    /// (off: `--no-output-commit`, to measure the raw overhead).
    pub output_commit: bool,
    /// The per-epoch log (None: the default under /var/log/resilire).
    pub log: Option<String>,
}

/// Where the per-epoch logs go by default.
pub const LOG_DIR: &str = "/var/log/resilire";

/// Where `status` finds the protected VMs' last figures.
pub const STATUS_DIR: &str = "/run/resilire/protect";

/// Pages per READ when the image is read back.
const READ_PAGES: u32 = 32;

/// Live pre-copy rounds stop when a round no longer shrinks the dirty set
/// by a tenth, or after this many.
const MAX_PRECOPY_ROUNDS: usize = 8;

fn xl_config_json(domid: u32) -> String {
    std::process::Command::new("xl")
        .args(["list", "-l", &domid.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Set by SIGTERM/SIGINT: protect stops after the current epoch, releases
/// the guest's held packets and tears output commit down (a protect killed
/// outright would leave the guest mute until the next protect cleans up).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores an
        // atomic; SA_RESTART keeps blocking reads and sleeps going.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Figures of the last epoch, for `status`.
#[derive(Default, Clone, Copy)]
struct Last {
    epoch: Option<u64>,
    pause: Duration,
    dirty: u64,
    wire: u64,
    ack: Duration,
}

impl Last {
    /// The figures of epoch `epoch`, acknowledged after `ack`.
    fn committed(epoch: u64, e: &Epoch, st: &EpochStats, ack: Duration) -> Last {
        Last {
            epoch: Some(epoch),
            pause: e.pause.total(),
            dirty: st.dirty,
            wire: st.wire,
            ack,
        }
    }
}

/// The per-epoch log, opened for appending.
struct EpochLog(Option<std::fs::File>);

impl EpochLog {
    fn open(o: &ProtectOptions) -> Self {
        let path = o
            .log
            .clone()
            .unwrap_or_else(|| format!("{LOG_DIR}/protect-{}.log", o.name));
        if let Some(dir) = std::path::Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => {
                println!("protect: per-epoch figures in {path}");
                EpochLog(Some(f))
            }
            Err(e) => {
                eprintln!("protect: warning: no epoch log {path}: {e}");
                EpochLog(None)
            }
        }
    }

    fn line(&mut self, text: &str) {
        if let Some(f) = self.0.as_mut() {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let _ = f.write_all(format!("unix_ms={ms} {text}\n").as_bytes());
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The epoch's barrier, at the suspend point.
fn barrier(oc: &mut Option<OutputCommit>) -> Result<()> {
    oc.as_mut().map_or(Ok(()), OutputCommit::buffer)
}

/// The backup is gone: nothing is held any more.
fn release_all(oc: &mut Option<OutputCommit>) {
    if let Some(oc) = oc.as_mut() {
        if let Err(e) = oc.release_all() {
            eprintln!("protect: WARNING: releasing held output: {e:#}");
        }
    }
}

/// Runs protection until `epochs` are done (or forever, or SIGTERM/SIGINT).
pub fn run(o: &ProtectOptions) -> Result<()> {
    install_stop_handlers();
    let mut oc = if o.output_commit {
        let oc =
            OutputCommit::setup(o.domid, output_commit::DEFAULT_LIMIT).context("output commit")?;
        println!("protect: output commit on: {}", oc.describe());
        Some(oc)
    } else {
        println!("protect: output commit OFF (--no-output-commit): the guest's packets leave before their epoch is acknowledged");
        None
    };
    let r = protect_loop(o, &mut oc);
    let state = if r.is_ok() { "stopped" } else { "failed" };
    // Released and torn down before the status says so.
    drop(oc);
    let detail = match &r {
        Ok(()) => String::new(),
        Err(e) => format!("error=\"{e:#}\""),
    };
    write_status(o, state, &Last::default(), &detail);
    r
}

fn protect_loop(o: &ProtectOptions, oc: &mut Option<OutputCommit>) -> Result<()> {
    let xc = XenCtrl::open()?;
    let fm = ForeignMemory::open()?;
    let xs = Xenstore::open()?;
    let info = xc.domain(o.domid)?;
    let t0 = Instant::now();
    write_status(o, "starting", &Last::default(), "");
    let mut cp = Checkpointer::start(&xc, &fm, &xs, o.domid)?;
    cp.set_interval(o.interval);
    println!(
        "protect: {} (domain {}): {} pages ({} MiB) found and copied live in {:.2}s",
        o.name,
        o.domid,
        cp.pages(),
        (cp.pages() * PAGE) >> 20,
        t0.elapsed().as_secs_f64()
    );
    let mut config = xl_config_json(o.domid);
    config.truncate(resilire_proto::MAX_XL_CONFIG);
    let vm = VmIdentity {
        vm_id: resilire_receiver::vm_id_of(&o.name),
        uuid: info.handle,
        name: o.name.clone(),
        pages: cp.pages() as u64,
        xl_config: config,
    };
    let mut log = EpochLog::open(o);
    let (mut pauses, mut acks, mut wires, mut dirties) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut done = 0u64;
    let mut shipper: Option<Shipper> = None;
    let mut next = Instant::now();
    let mut last = Last::default();
    loop {
        if o.epochs.is_some_and(|n| done >= n) || STOP.load(Ordering::SeqCst) {
            break;
        }
        let Some(sh) = shipper.as_mut() else {
            match synchronise(o, &vm, &mut cp, oc, &mut log) {
                Ok(sh) => {
                    shipper = Some(sh);
                    next = Instant::now();
                }
                Err(e) => {
                    // Said before the held packets go, so that a reader of
                    // the log sees why they went.
                    eprintln!(
                        "protect: WARNING: {} IS NOT PROTECTED: {e:#}; retrying in 1s",
                        o.name
                    );
                    release_all(oc);
                    log.line(&format!("state=unprotected error=\"{e:#}\""));
                    write_status(o, "unprotected", &last, &format!("error=\"{e:#}\""));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            continue;
        };
        // One checkpoint per interval; an epoch that overran its interval
        // does not make the next ones come back to back.
        next = (next + o.interval).max(Instant::now());
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let e: Epoch = cp.capture_epoch_with(|_, _| barrier(oc))?;
        let epoch = sh.next_epoch();
        let sent = sh
            .send_epoch(cp.image(), &e.dirty_slots)
            .and_then(|st| Ok((st, sh.wait_ack()?)));
        match sent {
            Ok((st, ack)) => {
                if let Some(oc) = oc.as_mut() {
                    oc.release_one()?;
                }
                let line = epoch_line(epoch, &e, &st, ack);
                println!("protect: {line}");
                log.line(&line);
                pauses.push(e.pause.total());
                acks.push(ack);
                wires.push(st.wire);
                dirties.push(st.dirty);
                done += 1;
                last = Last::committed(epoch, &e, &st, ack);
                write_status(o, "protected", &last, "");
            }
            Err(err) => {
                eprintln!(
                    "protect: WARNING: backup lost at epoch {epoch}: {err:#}; {} runs UNPROTECTED",
                    o.name
                );
                release_all(oc);
                log.line(&format!(
                    "epoch={epoch} state=unprotected error=\"{err:#}\""
                ));
                write_status(o, "unprotected", &last, &format!("error=\"{err:#}\""));
                shipper = None;
            }
        }
    }
    println!("protect: {}", summary(done, pauses, acks, wires, dirties));
    if let Some(mut sh) = shipper {
        if o.final_check {
            final_check(&mut cp, &mut sh, oc)?;
        }
        sh.close()?;
    }
    Ok(())
}

fn epoch_line(epoch: u64, e: &Epoch, st: &EpochStats, ack: Duration) -> String {
    format!(
        "epoch {epoch} dirty={} records={} raw_bytes={} wire={} pause_ms={:.1} suspend_ms={:.1} copy_ms={:.1} resume_ms={:.1} ack_ms={:.1}",
        st.dirty,
        st.records,
        st.dirty * PAGE as u64,
        st.wire,
        ms(e.pause.total()),
        ms(e.pause.suspend),
        ms(e.pause.copy),
        ms(e.pause.resume),
        ms(ack)
    )
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn summary(
    done: u64,
    pauses: Vec<Duration>,
    acks: Vec<Duration>,
    wires: Vec<u64>,
    dirties: Vec<u64>,
) -> String {
    let (median, p99) = median_p99(pauses);
    let (ack_median, ack_p99) = median_p99(acks);
    let wire_mean = wires.iter().sum::<u64>() / (wires.len() as u64).max(1);
    let dirty_median = median_u64(dirties);
    format!(
        "summary epochs={done} pause_median_ms={:.1} pause_p99_ms={:.1} dirty_median={dirty_median} raw_bytes_median={} wire_median={} wire_mean={wire_mean} ack_median_ms={:.1} ack_p99_ms={:.1}",
        ms(median),
        ms(p99),
        dirty_median * PAGE as u64,
        median_u64(wires),
        ms(ack_median),
        ms(ack_p99)
    )
}

/// The last epoch, shipped and acknowledged while the guest stays suspended,
/// then the backup's image read back and compared with the guest's memory.
fn final_check(
    cp: &mut Checkpointer,
    sh: &mut Shipper,
    oc: &mut Option<OutputCommit>,
) -> Result<()> {
    let pages = cp.pages() as u64;
    let mut outcome = Ok(0);
    let epoch = sh.next_epoch();
    cp.capture_epoch_with(|cp, slots| {
        barrier(oc)?;
        sh.send_epoch(cp.image(), slots)?;
        sh.wait_ack()?;
        if let Some(oc) = oc.as_mut() {
            oc.release_one()?;
        }
        let remote = sh.read_image(pages, READ_PAGES)?;
        outcome = cp.compare_remote(&remote);
        Ok(())
    })?;
    let n = outcome?;
    println!("protect: final check: epoch {epoch} committed at the backup equals the suspended guest's memory ({n} pages)");
    Ok(())
}

/// How long the backup may make no progress (no ACK, no room to write)
/// before protect counts it as lost, in steady state; the guest's output
/// is held meanwhile.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The same during the initial synchronisation.
const SYNC_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Pages per piece of the initial full copy (the progress bar's step).
const SYNC_STEP: usize = 4096;

/// Connects and ships the whole memory as the first epoch: live rounds
/// while the guest runs, then a consistent round at a suspend point (where
/// output commit takes its first barrier), COMMIT and its ACK.
fn synchronise(
    o: &ProtectOptions,
    vm: &VmIdentity,
    cp: &mut Checkpointer,
    oc: &mut Option<OutputCommit>,
    log: &mut EpochLog,
) -> Result<Shipper> {
    let t0 = Instant::now();
    write_status(o, "synchronising", &Last::default(), "");
    let mut sh = Shipper::connect(&o.backup, vm, o.key, o.block_size, IO_TIMEOUT)
        .with_context(|| format!("backup {}", o.backup))?;
    // The first epoch is the whole memory: an appliance on a loaded host
    // can leave its receive window shut for longer than a steady epoch's
    // timeout (seen in the lab: 10 s stalls mid-sync, sync retried over and
    // over). The steady timeout comes back once epoch 1 is committed.
    sh.set_io_timeout(SYNC_IO_TIMEOUT)?;
    let epoch = sh.next_epoch();
    println!(
        "protect: synchronising {} with {} as epoch {epoch}",
        o.name, o.backup
    );
    let all: Vec<u64> = (0..cp.pages() as u64).collect();
    let mut bar = Progress::new("protect: initial sync", all.len() as u64, PAGE as u64);
    for piece in all.chunks(SYNC_STEP) {
        sh.send_pages(cp.image(), piece)?;
        bar.add(piece.len() as u64);
    }
    bar.finish();
    let mut last = all.len();
    for round in 1..=MAX_PRECOPY_ROUNDS {
        let slots = cp.precopy_round()?;
        println!(
            "protect: sync round {round}: {} pages dirtied during the last round",
            slots.len()
        );
        sh.send_pages(cp.image(), &slots)?;
        if slots.len() * 10 > last * 9 || slots.len() < 64 {
            break;
        }
        last = slots.len();
    }
    let e = cp.capture_epoch_with(|_, _| barrier(oc))?;
    sh.send_pages(cp.image(), &e.dirty_slots)?;
    let st = sh.commit()?;
    let ack = sh.wait_ack()?;
    sh.set_io_timeout(IO_TIMEOUT)?;
    if let Some(oc) = oc.as_mut() {
        oc.release_one()?;
    }
    let line = format!(
        "synchronised in {:.2}s: epoch {epoch} committed, {} MiB on the wire, final pause {:.1} ms, ack {:.1} ms",
        t0.elapsed().as_secs_f64(),
        st.wire >> 20,
        ms(e.pause.total()),
        ms(ack)
    );
    println!("protect: {line}");
    log.line(&format!("epoch={epoch} {line}"));
    let last = Last::committed(epoch, &e, &st, ack);
    write_status(o, "protected", &last, "");
    Ok(sh)
}

fn write_status(o: &ProtectOptions, state: &str, last: &Last, detail: &str) {
    let _ = std::fs::create_dir_all(STATUS_DIR);
    let line = format!(
        "vm={} domain={} backup={} state={state} epoch={} interval_ms={} pause_ms={:.1} dirty_pages={} bytes={} ack_ms={:.1} output_commit={} pid={} {detail}\n",
        o.name,
        o.domid,
        o.backup,
        last.epoch.map_or("-".to_string(), |e| e.to_string()),
        o.interval.as_millis(),
        ms(last.pause),
        last.dirty,
        last.wire,
        ms(last.ack),
        if o.output_commit { "on" } else { "off" },
        std::process::id(),
    );
    // Written aside and renamed: `status` never reads half a line.
    let path = format!("{STATUS_DIR}/{}", o.name);
    let tmp = format!("{path}.tmp");
    if std::fs::write(&tmp, line).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// The value of `key=` in a status line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// One table row of `status` from a status file's line.
fn status_row(line: &str, alive: impl Fn(u32) -> bool) -> String {
    let f = |k| field(line, k).unwrap_or("-");
    let mut state = f("state").to_string();
    let running = matches!(
        state.as_str(),
        "starting" | "synchronising" | "protected" | "unprotected"
    );
    if running
        && !field(line, "pid")
            .and_then(|p| p.parse().ok())
            .is_some_and(alive)
    {
        state = format!("dead({state})");
    }
    format!(
        "{:<12} {:>6} {:<21} {:>7} {:>8} {:>9} {:>9} {:>12} {:>8} {:>6} {}",
        f("vm"),
        f("domain"),
        f("backup"),
        f("epoch"),
        format!("{}ms", f("interval_ms")),
        format!("{}ms", f("pause_ms")),
        f("dirty_pages"),
        f("bytes"),
        format!("{}ms", f("ack_ms")),
        f("output_commit"),
        state
    )
}

/// `resilire-shim status`: one line per protected VM (after a header).
pub fn print_status() -> Result<()> {
    let mut rows = Vec::new();
    if let Ok(rd) = std::fs::read_dir(STATUS_DIR) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "tmp") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(line) = text.lines().next() {
                rows.push(status_row(line, |pid| {
                    std::path::Path::new(&format!("/proc/{pid}")).exists()
                }));
            }
        }
    }
    if rows.is_empty() {
        println!("no protected VMs");
        return Ok(());
    }
    rows.sort();
    println!(
        "{:<12} {:>6} {:<21} {:>7} {:>8} {:>9} {:>9} {:>12} {:>8} {:>6} state",
        "vm",
        "domain",
        "backup",
        "epoch",
        "interval",
        "pause",
        "dirty_pg",
        "bytes/epoch",
        "ack",
        "output"
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::status_row;

    #[test]
    fn status_rows_show_the_figures_and_dead_protects() {
        let line = "vm=testvm domain=2 backup=10.99.0.50:7780 state=protected epoch=31 interval_ms=200 pause_ms=98.4 dirty_pages=568 bytes=32478 ack_ms=4.5 output_commit=on pid=77 ";
        let row = status_row(line, |_| true);
        for want in [
            "testvm",
            "10.99.0.50:7780",
            "31",
            "200ms",
            "98.4ms",
            "568",
            "32478",
            "4.5ms",
            "on",
            "protected",
        ] {
            assert!(row.contains(want), "{want} missing in {row}");
        }
        assert!(status_row(line, |_| false).ends_with("dead(protected)"));
        let stopped = line.replace("state=protected", "state=stopped");
        assert!(status_row(&stopped, |_| false).ends_with(" stopped"));
    }
}
