//! `resilire-workload`: the test guest's program.
//!
//! Keeps `--mem-mib` of memory under continuous mutation (see `records`),
//! prints progress on the console once a second, and serves a line protocol
//! on TCP `--port`:
//! - `counter` → `counter <n>`
//! - `verify` → `verify ok counter=<n> records=<m>` or `verify FAIL <why>`
//! - `gaps` → `gaps max_ms=<x> over50=<n> over500=<n>`: pauses the mutator
//!   saw between its batches (the guest's own view of downtime)
//! - `pauses` → `pauses n=<k> ms=<g1>,<g2>,...`: every gap of at least
//!   2 ms since the last `pauses-reset`, in order, to 0.1 ms (the
//!   distribution behind `gaps`: median and p99 of a checkpointer's pauses
//!   as the guest saw them)
//! - `pauses-reset` → `pauses-reset ok`
//! - `stream` → `counter <n>` every 100 ms until the client goes away
//!
//! A failed self-check is printed as `workload: VERIFY FAILED` on the console.

mod records;

use records::Records;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Config {
    mem_mib: usize,
    port: u16,
    record_size: usize,
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        mem_mib: 64,
        port: 7000,
        record_size: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--mem-mib" => {
                cfg.mem_mib = value("--mem-mib")?
                    .parse()
                    .map_err(|e| format!("--mem-mib: {e}"))?
            }
            "--port" => {
                cfg.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--record-size" => {
                cfg.record_size = value("--record-size")?
                    .parse()
                    .map_err(|e| format!("--record-size: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if cfg.record_size < records::MIN_RECORD || !cfg.record_size.is_multiple_of(8) {
        return Err(format!(
            "--record-size must be a multiple of 8, at least {}",
            records::MIN_RECORD
        ));
    }
    Ok(cfg)
}

/// Now on CLOCK_BOOTTIME: unlike the monotonic clock it keeps counting while
/// the guest is suspended, so a checkpoint's pause shows up as a gap.
fn boot_clock() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_BOOTTIME exists on Linux >= 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A clock for gaps that runs on while the guest is suspended: the TSC,
/// calibrated against the kernel clock over 200 ms at start. (CLOCK_BOOTTIME does not
/// do: after a suspend-cancel resume the kernel injects the suspended time
/// only sometimes, so most checkpoint pauses were invisible in it.)
struct TscClock {
    t0: u64,
    ns_per_tick: f64,
}

impl TscClock {
    fn calibrate() -> Self {
        let (m0, c0) = (boot_clock(), tsc());
        std::thread::sleep(Duration::from_millis(200));
        let (m1, c1) = (boot_clock(), tsc());
        let ns = (m1 - m0).as_nanos() as f64;
        TscClock {
            t0: c0,
            ns_per_tick: ns / (c1.wrapping_sub(c0)).max(1) as f64,
        }
    }

    fn now(&self) -> Duration {
        Duration::from_nanos((tsc().wrapping_sub(self.t0) as f64 * self.ns_per_tick) as u64)
    }
}

fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Pauses the mutator observed between batches.
#[derive(Default)]
struct Gaps {
    max: Duration,
    over_50ms: u64,
    over_500ms: u64,
    /// Gaps of at least [`LISTED_GAP`] since the last `pauses-reset`.
    list: Vec<Duration>,
}

/// Gaps this long or longer are listed one by one.
const LISTED_GAP: Duration = Duration::from_millis(2);
/// At most this many are kept between resets.
const MAX_LISTED: usize = 100_000;

struct State {
    records: Records,
    gaps: Gaps,
}

/// Requests waiting for the state: the mutator steps aside while non-zero
/// (a std mutex is not fair, and the mutator would otherwise starve them).
static WAITING: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("workload: {e}");
            std::process::exit(2);
        }
    };
    let records = Records::new(cfg.mem_mib << 20, cfg.record_size);
    match records.verify() {
        Ok(n) => println!(
            "workload: self-check ok, {n} records of {} bytes in {} MiB",
            cfg.record_size, cfg.mem_mib
        ),
        Err(d) => println!("workload: VERIFY FAILED at start: {d}"),
    }
    let state = Arc::new(Mutex::new(State {
        records,
        gaps: Gaps::default(),
    }));
    let listener = match TcpListener::bind(("0.0.0.0", cfg.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("workload: cannot listen on port {}: {e}", cfg.port);
            std::process::exit(1);
        }
    };
    {
        let state = state.clone();
        std::thread::spawn(move || serve(listener, state));
    }
    mutate_forever(&state);
}

/// The state, for a request: announced so that the mutator lets go.
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    WAITING.fetch_add(1, Ordering::SeqCst);
    let guard = state.lock().unwrap_or_else(|p| p.into_inner());
    WAITING.fetch_sub(1, Ordering::SeqCst);
    guard
}

fn mutate_forever(state: &Mutex<State>) -> ! {
    const BATCH: usize = 512;
    let clock = TscClock::calibrate();
    let mut last_batch = clock.now();
    let mut last_report = Instant::now();
    let mut at_report = 0u64;
    loop {
        let gap = clock.now().saturating_sub(last_batch);
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if gap > s.gaps.max {
            s.gaps.max = gap;
        }
        s.gaps.over_50ms += u64::from(gap > Duration::from_millis(50));
        s.gaps.over_500ms += u64::from(gap > Duration::from_millis(500));
        if gap >= LISTED_GAP && s.gaps.list.len() < MAX_LISTED {
            s.gaps.list.push(gap);
        }
        for _ in 0..BATCH {
            s.records.update();
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let c = s.records.counter;
            let rate = (c - at_report) as f64 / last_report.elapsed().as_secs_f64();
            println!(
                "workload: counter={c} updates/s={rate:.0} maxgap_ms={}",
                s.gaps.max.as_millis()
            );
            at_report = c;
            last_report = Instant::now();
        }
        drop(s);
        while WAITING.load(Ordering::SeqCst) != 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A gap is time the mutator was not running while it wanted to:
        // the pauses it grants to requests are not counted.
        last_batch = clock.now();
    }
}

fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    for conn in listener.incoming().flatten() {
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = handle(conn, &state);
        });
    }
}

fn handle(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        match line.trim() {
            "counter" => writeln!(out, "counter {}", lock(state).records.counter)?,
            "verify" => {
                let s = lock(state);
                let t0 = Instant::now();
                let reply = match s.records.verify() {
                    Ok(n) => format!(
                        "verify ok counter={} records={n} in {}ms",
                        s.records.counter,
                        t0.elapsed().as_millis()
                    ),
                    Err(d) => format!("verify FAIL {d}"),
                };
                drop(s);
                if reply.contains("FAIL") {
                    println!("workload: VERIFY FAILED: {reply}");
                } else {
                    println!("workload: {reply}");
                }
                writeln!(out, "{reply}")?
            }
            "gaps" => {
                let g = &lock(state).gaps;
                let reply = format!(
                    "gaps max_ms={} over50={} over500={}",
                    g.max.as_millis(),
                    g.over_50ms,
                    g.over_500ms
                );
                writeln!(out, "{reply}")?
            }
            "pauses" => {
                let list: Vec<String> = lock(state)
                    .gaps
                    .list
                    .iter()
                    .map(|g| format!("{:.1}", g.as_secs_f64() * 1e3))
                    .collect();
                writeln!(out, "pauses n={} ms={}", list.len(), list.join(","))?
            }
            "pauses-reset" => {
                lock(state).gaps.list.clear();
                writeln!(out, "pauses-reset ok")?
            }
            "stream" => loop {
                let c = lock(state).records.counter;
                writeln!(out, "counter {c}")?;
                std::thread::sleep(Duration::from_millis(100));
            },
            "" => {}
            other => writeln!(out, "error unknown command {other:?}")?,
        }
    }
    Ok(())
}
