//! `resilire-shim`: the dom0 side of Resilire.
//!
//! Today: domain listing and live dirty-page rates through log-dirty. The
//! protect/resume pipeline and the appliance commands build on these.

use resilire_shim::{
    appliance, checkpoint, guard, netbench, probe, protect, resume, ship, xen, xenstore,
};

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: resilire-shim <command>
  domains                               list domains (id, pages, kind, state)
  dirty <domid|name> [--interval-ms N] [--count N]
                                        enable log-dirty and print dirty pages per interval
  checkpoint <domid|name> [--epochs N] [--interval-ms N] [--verify] [--save FILE]
                                        cooperative checkpoints into dom0 memory, pause per epoch;
                                        --verify compares the copy with the suspended guest at the end;
                                        --save writes the last epoch as a file for `xl restore`
  protect <dom> --backup IP:PORT --key HEX64|@FILE [--interval MS] [--epochs N] [--block-size B] [--final-check]
          [--no-output-commit] [--log FILE]
                                        protect a running PVH guest: initial sync, then one
                                        checkpoint per interval shipped to the appliance; the
                                        guest's packets of an epoch are held until its ACK
                                        (output commit; off with --no-output-commit); per-epoch
                                        figures appended to FILE (/var/log/resilire/protect-<vm>.log)
  status                                one line per VM protected from this host
  send-images <dir> --to IP:PORT --vm NAME|--vm-id N --key HEX64|@FILE [--block-size B] [--verify-read]
                                        ship a directory of equal-size raw memory images (sorted
                                        by name, one epoch each) as a protected VM would
  read-image --appliance NAME --vm VM --out FILE [--compare FILE]
                                        read a VM's committed image out of the appliance by foreign
                                        mapping its published page directory (dom0 only)
  resume <vm> [--appliance NAME] [--order hot|pfn] [--paused]
                                        bring a protected VM back on this host from the last epoch
                                        its appliance committed (map, stream into xl restore, unpause)
  guard [--appliance NAME] [--missed N] [--min-silence-ms MS] [--primary HOST] [--order hot|pfn] [--once]
                                        on the backup host: declare a primary dead after N missed
                                        intervals (default 5) and resume its VM here
  net-sink --port P                     discard TCP traffic (the throughput baseline's far end)
  net-blast --to IP:PORT [--mib N]      plain TCP throughput to a net-sink, MiB/s
  probe-appliance forged|replayed|malformed|too-big|cut|hold|throughput --to IP:PORT --vm NAME[,NAME..]
                  --key HEX64|@FILE [--pages N] [--image F --chunks N] [--hold S] [IMAGE...]
                                        crafted connections: how the appliance refuses what a primary
                                        never sends; `throughput` times receive-and-commit alone
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
        Some("send-images") => cmd_send_images(&args[1..]),
        Some("protect") => cmd_protect(&args[1..]),
        Some("status") => protect::print_status().and_then(|_| guard::print_status()),
        Some("read-image") => cmd_read_image(&args[1..]),
        Some("resume") => cmd_resume(&args[1..]),
        Some("guard") => guard::run(&guard::GuardOptions {
            appliance: opt(&args[1..], "--appliance")
                .unwrap_or("resilire-appliance")
                .to_string(),
            missed: flag(&args[1..], "--missed", 5)? as u32,
            min_silence: Duration::from_millis(flag(&args[1..], "--min-silence-ms", 1000)?),
            poll: Duration::from_millis(50),
            primary: opt(&args[1..], "--primary").map(str::to_string),
            hot_first: order_is_hot(&args[1..])?,
            once: args.iter().any(|a| a == "--once"),
        }),
        Some("probe-appliance") => cmd_probe(&args[1..]),
        Some("net-sink") => netbench::sink(flag(&args[1..], "--port", 7790)? as u16),
        Some("net-blast") => {
            let to = opt(&args[1..], "--to").context("--to IP:PORT is required")?;
            let mib = flag(&args[1..], "--mib", 64)?;
            let rate = netbench::blast(to, mib)?;
            println!("net-blast: {mib} MiB to {to}: {rate:.1} MiB/s");
            Ok(())
        }
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
    resume::domain_named(xc, &xenstore::Xenstore::open()?, spec)?
        .with_context(|| format!("no domain named {spec}"))
}

fn cmd_domains() -> Result<()> {
    let xc = xen::XenCtrl::open()?;
    println!(
        "{:>5} {:>10} {:>10} {:5} {:4} state",
        "domid", "pages", "max", "kind", "hap"
    );
    for d in xc.domains()? {
        let state = match (d.dying, d.shutdown, d.paused) {
            (true, _, _) => "dying".to_string(),
            (_, Some(r), _) => format!("shutdown({r})"),
            (_, _, true) => "paused".to_string(),
            _ => "running".to_string(),
        };
        let kind = if d.hvm { "hvm" } else { "pv" };
        println!(
            "{:>5} {:>10} {:>10} {:5} {:4} {state}",
            d.domid, d.tot_pages, d.max_pages, kind, d.hap
        );
    }
    Ok(())
}

fn flag(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| name.to_string()),
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
    println!(
        "dirty: domain {domid}, {} frames, log-dirty on ({} dirty at start)",
        ld.pages(),
        first.count()
    );
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
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn cmd_appliance(args: &[String]) -> Result<()> {
    let name = opt(args, "--name")
        .unwrap_or("resilire-appliance")
        .to_string();
    let wait = Duration::from_secs(flag(args, "--wait", 60)?);
    match args.first().map(String::as_str) {
        Some("start") => {
            let ip = opt(args, "--ip").context("--ip A.B.C.D/PREFIX is required")?;
            let (addr, prefix) = ip
                .split_once('/')
                .context("--ip needs a prefix: A.B.C.D/P")?;
            let mut config = vec![
                ("ipv4-address".to_string(), addr.to_string()),
                ("ipv4-prefix".to_string(), prefix.to_string()),
                (
                    "ipv4-gateway".to_string(),
                    opt(args, "--gateway").unwrap_or("none").to_string(),
                ),
                (
                    "tcp-port".to_string(),
                    opt(args, "--port").unwrap_or("7780").to_string(),
                ),
                (
                    "log-level".to_string(),
                    opt(args, "--log-level").unwrap_or("info").to_string(),
                ),
            ];
            let memory_mib = flag(args, "--memory", 64)? as u32;
            // Default budget: what is left after the appliance's own needs.
            let budget = flag(
                args,
                "--budget",
                u64::from(memory_mib.saturating_sub(16).max(1)),
            )?;
            config.push(("memory-budget-mib".to_string(), budget.to_string()));
            for (i, a) in args.iter().enumerate() {
                if a == "--key" {
                    let spec = args
                        .get(i + 1)
                        .context("--key needs VMID=HEX64 or VMID=@FILE")?;
                    let (vm, key) = spec
                        .split_once('=')
                        .context("--key needs VMID=HEX64 or VMID=@FILE")?;
                    let key = match key.strip_prefix('@') {
                        Some(file) => std::fs::read_to_string(file)
                            .with_context(|| format!("reading key file {file}"))?,
                        None => key.to_string(),
                    };
                    config.push((format!("keys/{vm}"), key.trim().to_string()));
                }
            }
            let kernel = opt(args, "--kernel")
                .unwrap_or(appliance::DEFAULT_KERNEL)
                .to_string();
            let bridge = opt(args, "--bridge").unwrap_or("xenbr0").to_string();
            appliance::start(&appliance::StartOptions {
                name,
                kernel,
                memory_mib,
                bridge,
                config,
                wait,
            })
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
    println!(
        "checkpoint: domain {domid}: {} pages copied live in {:.2}s",
        cp.pages(),
        t0.elapsed().as_secs_f64()
    );
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
    if let Some(path) = opt(args, "--save") {
        // The last epoch as an xl save file: the same writer a resume feeds
        // `xl restore` from, here from dom0's own copy.
        let state = cp.restore_state();
        let order = resilire_shim::restore_stream::restore_order(state, true);
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
        );
        let n = resilire_shim::restore_stream::write_save_file(
            &mut f,
            state,
            xc.version()?,
            &order,
            &mut cp.image(),
        )?;
        println!(
            "checkpoint: epoch {} written as an xl save file: {path} ({n} bytes)",
            state.epoch
        );
    }
    Ok(())
}

/// A 32-byte key given as 64 hex digits or as @FILE holding them.
fn parse_key(spec: &str) -> Result<[u8; 32]> {
    let text = match spec.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading key file {f}"))?,
        None => spec.to_string(),
    };
    let hex = text.trim();
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("a key is 64 hex digits (32 bytes)");
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(key)
}

/// Raw image files of a directory, sorted by name, all of one size.
fn image_files(dir: &str) -> Result<(Vec<std::path::PathBuf>, usize)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {dir}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let first = files
        .first()
        .with_context(|| format!("{dir} holds no images"))?;
    let size = std::fs::metadata(first)?.len() as usize;
    if size == 0 || !size.is_multiple_of(checkpoint::PAGE) {
        bail!(
            "{}: size {size} is not a whole number of pages",
            first.display()
        );
    }
    for f in &files {
        if std::fs::metadata(f)?.len() as usize != size {
            bail!("{}: images differ in size", f.display());
        }
    }
    Ok((files, size))
}

fn cmd_send_images(args: &[String]) -> Result<()> {
    let dir = args.first().context("send-images needs a directory")?;
    let to = opt(args, "--to").context("--to IP:PORT is required")?;
    // The appliance knows keys by VM name; the wire carries the id derived
    // from it (resilire_receiver::vm_id_of).
    let (vm_id, vm_name) = match opt(args, "--vm") {
        Some(name) => (resilire_receiver::vm_id_of(name), name.to_string()),
        None => {
            let id = flag(args, "--vm-id", 1)?;
            (id, format!("images-{id}"))
        }
    };
    let key = parse_key(opt(args, "--key").context("--key is required")?)?;
    let block_size = flag(args, "--block-size", 64)? as usize;
    let (files, size) = image_files(dir)?;
    let pages = (size / checkpoint::PAGE) as u64;
    let vm = ship::VmIdentity {
        vm_id,
        uuid: [0; 16],
        name: vm_name,
        pages,
        xl_config: String::new(),
    };
    let mut sh = ship::Shipper::connect(to, &vm, key, block_size, Duration::from_secs(30))?;
    println!(
        "send-images: {} images of {} pages to {to} as VM {vm_id}; appliance holds epoch {:?}",
        files.len(),
        pages,
        sh.welcome.committed_epoch
    );
    let mut prev = vec![0u8; size];
    let (mut raw, mut wire) = (0u64, 0u64);
    // All images are read before the clock starts: the figure is shipping
    // and committing, not disk reads.
    let images: Vec<Vec<u8>> = files
        .iter()
        .map(std::fs::read)
        .collect::<std::io::Result<_>>()?;
    let t0 = Instant::now();
    for (f, img) in files.iter().zip(images) {
        let dirty: Vec<u64> = (0..pages as usize)
            .filter(|&p| {
                img[p * checkpoint::PAGE..(p + 1) * checkpoint::PAGE]
                    != prev[p * checkpoint::PAGE..(p + 1) * checkpoint::PAGE]
            })
            .map(|p| p as u64)
            .collect();
        let epoch = sh.next_epoch();
        let st = sh.send_epoch(&img, &dirty)?;
        let ack = sh.wait_ack()?;
        raw += st.dirty * checkpoint::PAGE as u64;
        wire += st.wire;
        println!(
            "send-images: epoch {epoch} ({}) dirty={} encoded={} wire={} chunks={} ack_ms={:.1}",
            f.file_name().unwrap_or_default().to_string_lossy(),
            st.dirty,
            st.encoded,
            st.wire,
            st.chunks,
            ack.as_secs_f64() * 1e3
        );
        prev = img;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "send-images: committed {} epochs in {secs:.2}s: {:.1} MiB of dirty pages ({:.1} MiB/s), {:.1} MiB on the wire ({:.1} MiB/s)",
        files.len(),
        raw as f64 / 1048576.0,
        raw as f64 / 1048576.0 / secs,
        wire as f64 / 1048576.0,
        wire as f64 / 1048576.0 / secs
    );
    if args.iter().any(|a| a == "--verify-read") {
        let got = sh.read_image(pages, resilire_proto::MAX_READ_PAGES)?;
        let page = checkpoint::PAGE;
        if let Some(p) = (0..pages as usize)
            .find(|&p| got[p * page..(p + 1) * page] != prev[p * page..(p + 1) * page])
        {
            bail!("read back: page {p} differs from the last image");
        }
        println!("send-images: read back {pages} pages through READ: equal to the last image byte for byte");
    }
    sh.close()
}

fn cmd_read_image(args: &[String]) -> Result<()> {
    let app = opt(args, "--appliance").unwrap_or("resilire-appliance");
    let vm = opt(args, "--vm").context("--vm is required")?;
    let out = opt(args, "--out").context("--out FILE is required")?;
    let xs = xenstore::Xenstore::open()?;
    let fm = xen::ForeignMemory::open()?;
    let app_id = appliance::domid(app)?;
    let t0 = Instant::now();
    let img = appliance::read_committed_image(&xs, &fm, app_id, vm)?;
    std::fs::write(out, &img.bytes).with_context(|| format!("writing {out}"))?;
    println!(
        "read-image: VM {vm} epoch {} from appliance {app} (domain {app_id}): {} pages by foreign mapping in {:.2}s -> {out}",
        img.epoch,
        img.bytes.len() / checkpoint::PAGE,
        t0.elapsed().as_secs_f64()
    );
    if let Some(cmp) = opt(args, "--compare") {
        let want = std::fs::read(cmp).with_context(|| format!("reading {cmp}"))?;
        if want != img.bytes {
            bail!("the committed image differs from {cmp}");
        }
        println!("read-image: equal to {cmp} byte for byte");
    }
    Ok(())
}

fn order_is_hot(args: &[String]) -> Result<bool> {
    match opt(args, "--order").unwrap_or("hot") {
        "hot" => Ok(true),
        "pfn" => Ok(false),
        other => bail!("--order {other}: hot or pfn"),
    }
}

fn cmd_resume(args: &[String]) -> Result<()> {
    let vm = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .context("resume needs the VM's name")?;
    let o = resume::ResumeOptions {
        vm: vm.clone(),
        appliance: opt(args, "--appliance")
            .unwrap_or("resilire-appliance")
            .to_string(),
        hot_first: order_is_hot(args)?,
        paused: args.iter().any(|a| a == "--paused"),
    };
    let r = resume::run(&o)?;
    println!("{}", resume::describe(&r));
    Ok(())
}

fn cmd_protect(args: &[String]) -> Result<()> {
    let spec = args.first().context("protect needs a domain")?;
    let xc = xen::XenCtrl::open()?;
    let domid = resolve_domain(&xc, spec)?;
    drop(xc);
    let name = xenstore::Xenstore::open()?
        .read(&format!("/local/domain/{domid}/name"))?
        .unwrap_or_else(|| spec.to_string());
    let o = protect::ProtectOptions {
        domid,
        name,
        backup: opt(args, "--backup")
            .context("--backup IP:PORT is required")?
            .to_string(),
        key: parse_key(opt(args, "--key").context("--key is required")?)?,
        interval: Duration::from_millis(flag(args, "--interval", 200)?),
        epochs: opt(args, "--epochs")
            .map(str::parse)
            .transpose()
            .context("--epochs")?,
        block_size: flag(args, "--block-size", 64)? as usize,
        final_check: args.iter().any(|a| a == "--final-check"),
        output_commit: !args.iter().any(|a| a == "--no-output-commit"),
        log: opt(args, "--log").map(str::to_string),
    };
    protect::run(&o)
}

fn cmd_probe(args: &[String]) -> Result<()> {
    let what = args.first().context("probe-appliance needs a probe name")?;
    let to = opt(args, "--to")
        .context("--to IP:PORT is required")?
        .to_string();
    let key = parse_key(opt(args, "--key").context("--key is required")?)?;
    let pages = flag(args, "--pages", 4096)?;
    let names: Vec<String> = opt(args, "--vm")
        .context("--vm is required")?
        .split(',')
        .map(str::to_string)
        .collect();
    let targets: Vec<probe::Target> = names
        .iter()
        .map(|n| probe::Target {
            addr: to.clone(),
            name: n.clone(),
            key,
            pages,
        })
        .collect();
    let t = &targets[0];
    match what.as_str() {
        "forged" => probe::forged(t),
        "replayed" => probe::replayed(t),
        "malformed" => probe::malformed(t),
        "too-big" => probe::too_big(t),
        "hold" => probe::hold(&targets, flag(args, "--hold", 5)?),
        "cut" => probe::cut(
            t,
            opt(args, "--image").context("--image is required")?,
            flag(args, "--chunks", 2)? as usize,
        ),
        "throughput" => {
            // Images: the arguments that are not options or option values.
            let mut images = Vec::new();
            let mut i = 1;
            while i < args.len() {
                if args[i].starts_with("--") {
                    i += 2;
                } else {
                    images.push(args[i].clone());
                    i += 1;
                }
            }
            if images.is_empty() {
                bail!("throughput needs image files");
            }
            probe::throughput(t, &images).map(|_| ())
        }
        other => bail!("unknown probe {other}"),
    }
}
