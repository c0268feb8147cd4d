//! `resilire-shim protect`: the primary's protection loop. Initial
//! synchronisation (live pre-copy rounds staged into the first epoch, then a
//! consistent final round and COMMIT), then one cooperative checkpoint per
//! interval, each shipped and acknowledged before the next. If the backup
//! goes away the guest keeps running unprotected, loudly, and protection
//! restarts with a fresh synchronisation when the backup is back.

use crate::checkpoint::{median_p99, Checkpointer, PAGE};
use crate::ship::{Shipper, VmIdentity};
use crate::xen::{ForeignMemory, XenCtrl};
use crate::xenstore::Xenstore;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

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
}

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

/// Runs protection until `epochs` are done (or forever).
pub fn run(o: &ProtectOptions) -> Result<()> {
    let xc = XenCtrl::open()?;
    let fm = ForeignMemory::open()?;
    let xs = Xenstore::open()?;
    let info = xc.domain(o.domid)?;
    let t0 = Instant::now();
    let mut cp = Checkpointer::start(&xc, &fm, &xs, o.domid)?;
    cp.set_interval(o.interval);
    println!(
        "protect: {} (domain {}): {} pages ({} MiB) found and copied live in {:.2}s",
        o.name,
        o.domid,
        cp.pages(),
        cp.pages() * PAGE >> 20,
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
    let mut pauses = Vec::new();
    let mut done = 0u64;
    let mut shipper: Option<Shipper> = None;
    let mut next = Instant::now();
    loop {
        if o.epochs.is_some_and(|n| done >= n) {
            break;
        }
        let Some(sh) = shipper.as_mut() else {
            match synchronise(o, &vm, &mut cp) {
                Ok(sh) => shipper = Some(sh),
                Err(e) => {
                    eprintln!("protect: WARNING: {} IS NOT PROTECTED: {e:#}; retrying in 1s", o.name);
                    write_status(o, "unprotected", None, &format!("{e:#}"));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            continue;
        };
        next += o.interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let e = cp.capture_epoch()?;
        let epoch = sh.next_epoch();
        let sent = sh.send_epoch(cp.image(), &e.dirty_slots).and_then(|st| Ok((st, sh.wait_ack()?)));
        match sent {
            Ok((st, ack)) => {
                pauses.push(e.pause.total());
                done += 1;
                let line = format!(
                    "epoch {epoch} dirty={} records={} wire={} pause_ms={:.1} ack_ms={:.1}",
                    st.dirty,
                    st.records,
                    st.wire,
                    e.pause.total().as_secs_f64() * 1e3,
                    ack.as_secs_f64() * 1e3
                );
                println!("protect: {line}");
                write_status(o, "protected", Some(epoch), &line);
            }
            Err(err) => {
                eprintln!("protect: WARNING: backup lost at epoch {epoch}: {err:#}; {} runs UNPROTECTED", o.name);
                write_status(o, "unprotected", None, &format!("{err:#}"));
                shipper = None;
            }
        }
    }
    let (median, p99) = median_p99(pauses);
    println!(
        "protect: summary epochs={done} pause_median_ms={:.1} pause_p99_ms={:.1}",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    if let Some(mut sh) = shipper {
        if o.final_check {
            final_check(&mut cp, &mut sh)?;
        }
        sh.close()?;
    }
    Ok(())
}

/// The last epoch, shipped and acknowledged while the guest stays suspended,
/// then the backup's image read back and compared with the guest's memory.
fn final_check(cp: &mut Checkpointer, sh: &mut Shipper) -> Result<()> {
    let pages = cp.pages() as u64;
    let mut outcome = Ok(0);
    let epoch = sh.next_epoch();
    cp.capture_epoch_with(|cp, slots| {
        sh.send_epoch(cp.image(), slots)?;
        sh.wait_ack()?;
        let remote = sh.read_image(pages, READ_PAGES)?;
        outcome = cp.compare_remote(&remote);
        Ok(())
    })?;
    let n = outcome?;
    println!("protect: final check: epoch {epoch} committed at the backup equals the suspended guest's memory ({n} pages)");
    Ok(())
}

/// Connects and ships the whole memory as the first epoch: live rounds
/// while the guest runs, then a consistent round at a suspend point, COMMIT
/// and its ACK.
fn synchronise(o: &ProtectOptions, vm: &VmIdentity, cp: &mut Checkpointer) -> Result<Shipper> {
    let t0 = Instant::now();
    let mut sh = Shipper::connect(&o.backup, vm, o.key, o.block_size, Duration::from_secs(10))
        .with_context(|| format!("backup {}", o.backup))?;
    let epoch = sh.next_epoch();
    println!("protect: synchronising {} with {} as epoch {epoch}", o.name, o.backup);
    let all: Vec<u64> = (0..cp.pages() as u64).collect();
    sh.send_pages(cp.image(), &all)?;
    let mut last = all.len();
    for round in 1..=MAX_PRECOPY_ROUNDS {
        let slots = cp.precopy_round()?;
        println!("protect: sync round {round}: {} pages dirtied during the last round", slots.len());
        sh.send_pages(cp.image(), &slots)?;
        if slots.len() * 10 > last * 9 || slots.len() < 64 {
            break;
        }
        last = slots.len();
    }
    let e = cp.capture_epoch()?;
    sh.send_pages(cp.image(), &e.dirty_slots)?;
    let st = sh.commit()?;
    let ack = sh.wait_ack()?;
    println!(
        "protect: synchronised in {:.2}s: epoch {epoch} committed, {} MiB on the wire, final pause {:.1} ms, ack {:.1} ms",
        t0.elapsed().as_secs_f64(),
        st.wire >> 20,
        e.pause.total().as_secs_f64() * 1e3,
        ack.as_secs_f64() * 1e3
    );
    write_status(o, "protected", Some(epoch), "synchronised");
    Ok(sh)
}

fn write_status(o: &ProtectOptions, state: &str, epoch: Option<u64>, detail: &str) {
    let _ = std::fs::create_dir_all(STATUS_DIR);
    let line = format!(
        "{} domain={} backup={} state={state} epoch={} interval_ms={} {detail}\n",
        o.name,
        o.domid,
        o.backup,
        epoch.map_or("-".to_string(), |e| e.to_string()),
        o.interval.as_millis()
    );
    let _ = std::fs::write(format!("{STATUS_DIR}/{}", o.name), line);
}

/// `resilire-shim status`: one line per protected VM.
pub fn print_status() -> Result<()> {
    let Ok(rd) = std::fs::read_dir(STATUS_DIR) else {
        println!("no protected VMs");
        return Ok(());
    };
    for e in rd.flatten() {
        print!("{}", std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    Ok(())
}
