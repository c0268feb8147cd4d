//! `resilire-shim`: the dom0 side of Resilire.
//!
//! Today: domain listing and live dirty-page rates through log-dirty. The
//! protect/resume pipeline and the appliance commands build on these.

use resilire_shim::{appliance, checkpoint, xen, xenstore};

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: resilire-shim <command>
  domains                               list domains (id, pages, kind, state)
  dirty <domid|name> [--interval-ms N] [--count N]
                                        enable log-dirty and print dirty pages per interval
  checkpoint <domid|name> [--epochs N] [--interval-ms N] [--verify]
                                        cooperative checkpoints into dom0 memory, pause per epoch;
                                        --verify compares the copy with the suspended guest at the end
  appliance start [--name N] [--kernel ELF] [--memory MiB] [--bridge BR]
                  --ip A.B.C.D/P [--gateway G|none] [--port P] [--budget MiB]
                  [--log-level L] --key VMID=HEX64|@FILE [--key ...] [--wait S]
                                        create the appliance domain, configure it, wait for ready
  appliance status [--name N]           the appliance's status as it reports it
  appliance stop [--name N]             clean shutdown (xl shutdown), waited for";

fn main() {
    if let Err(e) = run() {
        eprintln!("resilire-shim: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("domains") => cmd_domains(),
        Some("dirty") => cmd_dirty(&args[1..]),
        Some("appliance") => cmd_appliance(&args[1..]),
        Some("checkpoint") => cmd_checkpoint(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Resolves a domain given by id or by name (through xenstore's /local/domain/<id>/name).
fn resolve_domain(xc: &xen::XenCtrl, spec: &str) -> Result<u32> {
    if let Ok(id) = spec.parse::<u32>() {
        return Ok(id);
    }
    for d in xc.domains()? {
        let out = std::process::Command::new("xenstore-read")
            .arg(format!("/local/domain/{}/name", d.domid))
            .output()
            .context("running xenstore-read")?;
        if String::from_utf8_lossy(&out.stdout).trim() == spec {
            return Ok(d.domid);
        }
    }
    bail!("no domain named {spec}")
}

fn cmd_domains() -> Result<()> {
    let xc = xen::XenCtrl::open()?;
    println!("{:>5} {:>10} {:>10} {:5} {:4} state", "domid", "pages", "max", "kind", "hap");
    for d in xc.domains()? {
        let state = match (d.dying, d.shutdown, d.paused) {
            (true, _, _) => "dying".to_string(),
            (_, Some(r), _) => format!("shutdown({r})"),
            (_, _, true) => "paused".to_string(),
            _ => "running".to_string(),
        };
        let kind = if d.hvm { "hvm" } else { "pv" };
        println!("{:>5} {:>10} {:>10} {:5} {:4} {state}", d.domid, d.tot_pages, d.max_pages, kind, d.hap);
    }
    Ok(())
}

fn flag(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).with_context(|| format!("{name} needs a value"))?.parse().with_context(|| name.to_string()),
        None => Ok(default),
    }
}

fn cmd_dirty(args: &[String]) -> Result<()> {
    let spec = args.first().context("dirty needs a domain")?;
    let interval = Duration::from_millis(flag(args, "--interval-ms", 1000)?);
    let count = flag(args, "--count", 10)?;
    let xc = xen::XenCtrl::open()?;
    let domid = resolve_domain(&xc, spec)?;
    let mut ld = xc.log_dirty(domid)?;
    // The first clean returns everything (all pages start dirty): discard it.
    let first = ld.clean()?;
    println!("dirty: domain {domid}, {} frames, log-dirty on ({} dirty at start)", ld.pages(), first.count());
    let mut total = 0u64;
    for i in 1..=count {
        let t0 = Instant::now();
        std::thread::sleep(interval);
        let bm = ld.clean()?;
        let secs = t0.elapsed().as_secs_f64();
        let n = bm.count();
        total += n;
        println!(
            "dirty: interval {i} pages={n} rate={:.0} pages/s ({:.1} MiB/s)",
            n as f64 / secs,
            n as f64 * 4096.0 / secs / 1048576.0
        );
    }
    println!("dirty: total {total} pages over {count} intervals");
    Ok(())
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn cmd_appliance(args: &[String]) -> Result<()> {
    let name = opt(args, "--name").unwrap_or("resilire-appliance").to_string();
    let wait = Duration::from_secs(flag(args, "--wait", 60)?);
    match args.first().map(String::as_str) {
        Some("start") => {
            let ip = opt(args, "--ip").context("--ip A.B.C.D/PREFIX is required")?;
            let (addr, prefix) = ip.split_once('/').context("--ip needs a prefix: A.B.C.D/P")?;
            let mut config = vec![
                ("ipv4-address".to_string(), addr.to_string()),
                ("ipv4-prefix".to_string(), prefix.to_string()),
                ("ipv4-gateway".to_string(), opt(args, "--gateway").unwrap_or("none").to_string()),
                ("tcp-port".to_string(), opt(args, "--port").unwrap_or("7780").to_string()),
                ("log-level".to_string(), opt(args, "--log-level").unwrap_or("info").to_string()),
            ];
            let memory_mib = flag(args, "--memory", 64)? as u32;
            // Default budget: what is left after the appliance's own needs.
            let budget = flag(args, "--budget", u64::from(memory_mib.saturating_sub(16).max(1)))?;
            config.push(("memory-budget-mib".to_string(), budget.to_string()));
            for (i, a) in args.iter().enumerate() {
                if a == "--key" {
                    let spec = args.get(i + 1).context("--key needs VMID=HEX64 or VMID=@FILE")?;
                    let (vm, key) = spec.split_once('=').context("--key needs VMID=HEX64 or VMID=@FILE")?;
                    let key = match key.strip_prefix('@') {
                        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading key file {file}"))?,
                        None => key.to_string(),
                    };
                    config.push((format!("keys/{vm}"), key.trim().to_string()));
                }
            }
            let kernel = opt(args, "--kernel").unwrap_or(appliance::DEFAULT_KERNEL).to_string();
            let bridge = opt(args, "--bridge").unwrap_or("xenbr0").to_string();
            appliance::start(&appliance::StartOptions { name, kernel, memory_mib, bridge, config, wait })
        }
        Some("status") => appliance::status(&name),
        Some("stop") => appliance::stop(&name, wait),
        _ => bail!("appliance needs start, status or stop"),
    }
}

fn cmd_checkpoint(args: &[String]) -> Result<()> {
    let spec = args.first().context("checkpoint needs a domain")?;
    let epochs = flag(args, "--epochs", 10)?;
    let interval = Duration::from_millis(flag(args, "--interval-ms", 200)?);
    let verify = args.iter().any(|a| a == "--verify");
    let xc = xen::XenCtrl::open()?;
    let fm = xen::ForeignMemory::open()?;
    let xs = xenstore::Xenstore::open()?;
    let domid = resolve_domain(&xc, spec)?;
    let t0 = Instant::now();
    let mut cp = checkpoint::Checkpointer::start(&xc, &fm, &xs, domid)?;
    println!("checkpoint: domain {domid}: {} pages copied live in {:.2}s", cp.pages(), t0.elapsed().as_secs_f64());
    let mut pauses = Vec::new();
    let mut dirty_total = 0usize;
    for _ in 0..epochs {
        std::thread::sleep(interval);
        let e = cp.capture_epoch()?;
        let p = e.pause;
        println!(
            "checkpoint: epoch {} dirty={} bytes={} pause_ms={:.1} (suspend {:.1} copy {:.1} resume {:.1}) hvm_ctx={}B",
            e.number,
            e.dirty.len(),
            e.dirty.len() * checkpoint::PAGE,
            p.total().as_secs_f64() * 1e3,
            p.suspend.as_secs_f64() * 1e3,
            p.copy.as_secs_f64() * 1e3,
            p.resume.as_secs_f64() * 1e3,
            e.hvm_context.len()
        );
        pauses.push(p.total());
        dirty_total += e.dirty.len();
    }
    let (median, p99) = checkpoint::median_p99(pauses);
    println!(
        "checkpoint: summary epochs={epochs} pause_median_ms={:.1} pause_p99_ms={:.1} dirty_pages_per_epoch={:.0}",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        dirty_total as f64 / epochs.max(1) as f64
    );
    if verify {
        cp.verify_against_guest()?;
    }
    Ok(())
}
