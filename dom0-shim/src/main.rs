//! `resilire-shim`: the dom0 side of Resilire.
//!
//! Today: domain listing and live dirty-page rates through log-dirty. The
//! protect/resume pipeline and the appliance commands build on these.

use resilire_shim::{appliance, xen};

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: resilire-shim <command>
  domains                               list domains (id, pages, kind, state)
  dirty <domid|name> [--interval-ms N] [--count N]
                                        enable log-dirty and print dirty pages per interval
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
