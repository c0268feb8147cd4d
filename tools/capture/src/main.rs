//! `resilire-capture`: produces directories of raw memory images of equal size, one file per
//! epoch (`0000.raw`, `0001.raw`, ...), taken from real software running inside a QEMU/KVM
//! virtual machine, for the FGBI benchmark and tests.
//!
//! Subcommands:
//!
//! * `run` boots the host's Debian kernel with a tiny busybox initramfs that mounts the host's
//!   root filesystem read-only over virtio-9p, starts a workload (PostgreSQL + pgbench, or Redis +
//!   redis-benchmark) with real Debian binaries, and every interval stops the VM, dumps its whole
//!   guest-physical RAM with the QMP `pmemsave` command, and resumes it.
//! * `pack` turns such a directory into a small compressed set for the repository (optionally a
//!   window of the images): the first image as `NNNN.raw.zst`, each later one as `NNNN.xor.zst`
//!   (zstd of the XOR with the previous image).
//! * `unpack` turns a packed set back into `NNNN.raw` files, byte for byte.
//!
//! See `tools/capture/README.md` for the commands that made the committed sets.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The result type of the tool: errors are printed and end the process with status 1.
type Res<T> = Result<T, String>;

/// Size of a guest page, used to count changed pages.
const PAGE: usize = 4096;

/// Kernel modules, in load order, that the initramfs needs to mount the host root over virtio-9p.
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "fs/netfs/netfs.ko",
    "fs/fscache/fscache.ko",
    "net/9p/9pnet.ko",
    "net/9p/9pnet_virtio.ko",
    "fs/9p/9p.ko",
];

/// The initramfs `/init`: mounts the host root read-only, gives it writable tmpfs where programs
/// write, and runs `/workload.sh` chrooted into it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULE_LIST; do insmod /lib/mod/$m || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host || { echo "RESILIRE-FAILED 9p"; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs -o mode=1777 shm /host/dev/shm
mount -t tmpfs -o mode=1777,size=75% tmp /host/tmp
mount -t tmpfs -o mode=755 run /host/run
cp /workload.sh /host/tmp/workload.sh
echo "RESILIRE-BOOTED"
chroot /host /bin/sh /tmp/workload.sh
echo "RESILIRE-WORKLOAD-EXITED $?"
poweroff -f
"#;

/// PostgreSQL 15 with pgbench (TPC-B-like) at scale 3, four clients, inside the VM.
const WL_PGBENCH: &str = r#"set -e
trap 'st=$?; [ $st = 0 ] || tail -n 20 /tmp/*.log; exit $st' EXIT
export HOME=/tmp PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p /tmp/pg /run/postgresql && chown postgres:postgres /tmp/pg /run/postgresql
as_pg initdb -D /tmp/pg -A trust -U postgres >/tmp/initdb.log 2>&1
as_pg pg_ctl -D /tmp/pg -l /tmp/pg.log -w -o "-k /tmp -c listen_addresses='' -c shared_buffers=48MB -c max_wal_size=96MB -c min_wal_size=32MB" start
as_pg pgbench -h /tmp -U postgres -i -s 3 -q postgres >/tmp/init.log 2>&1
echo "RESILIRE-READY"
as_pg pgbench -h /tmp -U postgres -c 4 -j 2 -T 36000 -P 5 postgres
"#;

/// Redis as a key-value store, loaded with 200k keys, then a mixed set/get/incr/lpush/hset load.
const WL_REDIS: &str = r#"set -e
trap 'st=$?; [ $st = 0 ] || tail -n 20 /tmp/*.log; exit $st' EXIT
export HOME=/tmp
redis-server --port 0 --unixsocket /tmp/redis.sock --save '' --appendonly no --daemonize yes --logfile /tmp/redis.log --dir /tmp
sleep 1
redis-benchmark -s /tmp/redis.sock -t set -r 200000 -n 200000 -d 100 -q >/dev/null
echo "RESILIRE-READY"
while true; do redis-benchmark -s /tmp/redis.sock -t set,get,incr,lpush,hset -r 200000 -n 2000000 -d 100 -P 8 -c 8 -q; done
"#;

/// rustc (the host's pinned toolchain) compiling the regex-syntax crate from the host's cargo
/// registry, over and over; run it with `--mem-mib 512` (rustc peaks near 300 MiB).
const WL_RUSTC: &str = r#"set -e
trap 'st=$?; [ $st = 0 ] || tail -n 20 /tmp/*.log; exit $st' EXIT
export HOME=/tmp
RUSTC=$(ls -d /root/.rustup/toolchains/*/bin/rustc | head -n 1)
SRC=$(ls -d /root/.cargo/registry/src/*/regex-syntax-0.8.* | head -n 1)
[ -x "$RUSTC" ] && [ -d "$SRC" ] || { echo "RESILIRE-FAILED no rustc or regex-syntax source"; exit 1; }
mkdir -p /tmp/out
( i=0; while true; do
    "$RUSTC" --edition 2021 --crate-name regex_syntax --crate-type lib -C opt-level=1 \
      --cfg 'feature="std"' --cfg 'feature="unicode-perl"' --cfg 'feature="unicode-case"' \
      --cfg 'feature="unicode-gencat"' --cap-lints allow "$SRC/src/lib.rs" --out-dir /tmp/out >/tmp/rustc.log 2>&1
    i=$((i+1)); echo "compile $i done"
  done ) &
sleep 2
echo "RESILIRE-READY"
wait
"#;

/// Returns the workload script for a workload name.
fn workload_script(name: &str) -> Res<&'static str> {
    match name {
        "pgbench" => Ok(WL_PGBENCH),
        "redis" => Ok(WL_REDIS),
        "rustc" => Ok(WL_RUSTC),
        _ => Err(format!(
            "unknown workload {name:?} (known: pgbench, redis, rustc)"
        )),
    }
}

/// A minimal writer of the `newc` cpio format used by Linux initramfs images.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// An empty archive.
    fn new() -> Self {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    /// Appends one entry with the given mode, device numbers (for device nodes) and content.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let namesize = name.len() + 1;
        let hdr =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, data.len(), 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.out.extend_from_slice(hdr.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Pads to a multiple of four bytes.
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Adds a directory.
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    /// Adds a regular file.
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    /// Closes the archive and returns its bytes.
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Finds the newest Debian kernel in /boot and its module directory.
fn find_kernel() -> Res<(PathBuf, PathBuf)> {
    let mut best: Option<String> = None;
    for e in fs::read_dir("/boot").map_err(|e| format!("/boot: {e}"))? {
        let name = e
            .map_err(|e| e.to_string())?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            if Path::new("/lib/modules").join(v).is_dir() && best.as_deref().is_none_or(|b| v > b) {
                best = Some(v.to_string());
            }
        }
    }
    let v = best.ok_or("no /boot/vmlinuz-* with matching /lib/modules")?;
    Ok((
        PathBuf::from(format!("/boot/vmlinuz-{v}")),
        PathBuf::from(format!("/lib/modules/{v}/kernel")),
    ))
}

/// Builds the initramfs for a workload and returns its bytes.
fn build_initramfs(moddir: &Path, workload: &str) -> Res<Vec<u8>> {
    let mut c = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "host", "lib", "lib/mod"] {
        c.dir(d);
    }
    c.entry("dev/console", 0o020600, (5, 1), &[]);
    let bb = fs::read("/bin/busybox")
        .map_err(|e| format!("/bin/busybox (apt-get install busybox-static): {e}"))?;
    c.file("bin/busybox", 0o755, &bb);
    let mut names = Vec::new();
    for m in MODULES {
        let p = moddir.join(m);
        let data = fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let base = Path::new(m)
            .file_name()
            .and_then(|s| s.to_str())
            .ok_or("bad module name")?;
        c.file(&format!("lib/mod/{base}"), 0o644, &data);
        names.push(base.to_string());
    }
    c.file(
        "init",
        0o755,
        INIT.replace("MODULE_LIST", &names.join(" ")).as_bytes(),
    );
    c.file("workload.sh", 0o755, workload_script(workload)?.as_bytes());
    Ok(c.finish())
}

/// A QMP (QEMU Machine Protocol) connection over a unix socket.
struct Qmp {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    fn connect(path: &Path) -> Res<Qmp> {
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("QMP connect {}: {e}", path.display())),
            }
        };
        let wr = s.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            rd: BufReader::new(s),
            wr,
        };
        let mut greeting = String::new();
        q.rd.read_line(&mut greeting).map_err(|e| e.to_string())?;
        if !greeting.contains("\"QMP\"") {
            return Err(format!("unexpected QMP greeting: {greeting}"));
        }
        q.cmd(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    /// Sends one command and waits for its `return` (skipping asynchronous events).
    fn cmd(&mut self, json: &str) -> Res<String> {
        self.wr
            .write_all(json.as_bytes())
            .and_then(|_| self.wr.write_all(b"\n"))
            .map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            let n = self.rd.read_line(&mut line).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("QMP connection closed".into());
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                return Err(format!("QMP error for {json}: {line}"));
            }
        }
    }
}

/// Options of `run`.
struct RunOpts {
    workload: String,
    out: PathBuf,
    mem_mib: usize,
    epochs: usize,
    interval_ms: u64,
    warmup_s: u64,
    cpus: usize,
    kvm: bool,
}

/// Waits until the serial log contains `marker`, failing on `RESILIRE-FAILED` or timeout.
fn wait_serial(log: &Path, marker: &str, child: &mut Child, timeout: Duration) -> Res<()> {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(marker) {
            return Ok(());
        }
        if text.contains("RESILIRE-FAILED") || text.contains("RESILIRE-WORKLOAD-EXITED") {
            return Err(format!(
                "workload failed in the VM; serial log: {}",
                log.display()
            ));
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("qemu exited ({st}); serial log: {}", log.display()));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "timeout waiting for {marker}; serial log: {}",
                log.display()
            ));
        }
        sleep(Duration::from_millis(200));
    }
}

/// `run`: boots the VM, waits for the workload, captures the epochs.
fn run(o: &RunOpts) -> Res<()> {
    let (kernel, moddir) = find_kernel()?;
    fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let out = fs::canonicalize(&o.out).map_err(|e| e.to_string())?;
    // QEMU's files (initramfs, QMP socket, serial log) go beside the output, which holds only
    // the images.
    let work = PathBuf::from(format!("{}.vm", out.display()));
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let initrd = work.join("initramfs.cpio");
    fs::write(&initrd, build_initramfs(&moddir, &o.workload)?).map_err(|e| e.to_string())?;
    let qmp_path = work.join("qmp.sock");
    let serial = work.join("serial.log");
    let _ = fs::remove_file(&qmp_path);
    let _ = fs::remove_file(&serial);
    // KVM is used only on request: on nested hosts it can hang silently; TCG always works.
    let kvm = o.kvm;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-machine", if kvm { "q35,accel=kvm" } else { "q35,accel=tcg" }])
        .args(["-cpu", if kvm { "host" } else { "max" }])
        .args(["-m", &format!("{}M", o.mem_mib), "-smp", &o.cpus.to_string()])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .args(["-serial", &format!("file:{}", serial.display())])
        .args(["-qmp", &format!("unix:{},server=on,wait=off", qmp_path.display())])
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot"])
        .stdin(Stdio::null());
    eprintln!(
        "capture: booting {} with {} MiB, workload {}",
        kernel.display(),
        o.mem_mib,
        o.workload
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let result = capture_epochs(o, &out, &qmp_path, &serial, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The capture loop proper, with QEMU running.
fn capture_epochs(
    o: &RunOpts,
    out: &Path,
    qmp_path: &Path,
    serial: &Path,
    child: &mut Child,
) -> Res<()> {
    let mut q = Qmp::connect(qmp_path)?;
    wait_serial(serial, "RESILIRE-READY", child, Duration::from_secs(600))?;
    eprintln!("capture: workload ready, warming up {} s", o.warmup_s);
    sleep(Duration::from_secs(o.warmup_s));
    let size = o.mem_mib * 1024 * 1024;
    let mut prev: Option<Vec<u8>> = None;
    for i in 0..o.epochs {
        let file = out.join(format!("{i:04}.raw"));
        q.cmd(r#"{"execute":"stop"}"#)?;
        let t = Instant::now();
        q.cmd(&format!(
            r#"{{"execute":"pmemsave","arguments":{{"val":0,"size":{size},"filename":"{}"}}}}"#,
            file.display()
        ))?;
        let dump = t.elapsed();
        q.cmd(r#"{"execute":"cont"}"#)?;
        let cur = fs::read(&file).map_err(|e| e.to_string())?;
        if cur.len() != size {
            return Err(format!(
                "{} has {} bytes, expected {size}",
                file.display(),
                cur.len()
            ));
        }
        let dirty = prev.as_ref().map(|p| changed_pages(p, &cur));
        eprintln!(
            "capture: epoch {i:04} dumped in {} ms, dirty pages vs previous: {}",
            dump.as_millis(),
            dirty.map_or("-".to_string(), |d| d.to_string())
        );
        prev = Some(cur);
        sleep(Duration::from_millis(o.interval_ms));
    }
    let _ = q.cmd(r#"{"execute":"quit"}"#);
    let _ = serial;
    Ok(())
}

/// Number of 4 KiB pages that differ between two equal-length images.
fn changed_pages(a: &[u8], b: &[u8]) -> usize {
    a.chunks(PAGE)
        .zip(b.chunks(PAGE))
        .filter(|(x, y)| x != y)
        .count()
}

/// Lists `dir`'s files with the given suffix, sorted by name.
fn list_sorted(dir: &Path, suffixes: &[&str]) -> Res<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| suffixes.iter().any(|s| n.ends_with(s)))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Parses a size with an optional K/M/G suffix (binary units).
fn parse_size(s: &str) -> Res<usize> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1usize << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    Ok(n * mul)
}

/// `pack`: compresses `epochs` images of `src` (optionally a window of them) into `dst`.
fn pack(
    src: &Path,
    dst: &Path,
    first: usize,
    epochs: usize,
    window: Option<usize>,
    level: i32,
) -> Res<()> {
    let files = list_sorted(src, &[".raw"])?;
    let files: Vec<_> = files.into_iter().skip(first).take(epochs).collect();
    if files.is_empty() {
        return Err(format!("no .raw files in {}", src.display()));
    }
    let images: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(f).map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    let len = images[0].len();
    if images.iter().any(|i| i.len() != len) {
        return Err("images differ in size".into());
    }
    // Choose the window (aligned to its size) with the most changed pages over the epochs.
    let (off, wlen) = match window {
        None => (0, len),
        Some(w) => {
            if w == 0 || w > len || w % PAGE != 0 {
                return Err(
                    "window must be a non-zero multiple of 4 KiB, at most the image size".into(),
                );
            }
            let mut best = (0usize, 0usize);
            let mut off = 0;
            while off + w <= len {
                let d: usize = images
                    .windows(2)
                    .map(|p| changed_pages(&p[0][off..off + w], &p[1][off..off + w]))
                    .sum();
                if d > best.1 {
                    best = (off, d);
                }
                off += w;
            }
            eprintln!(
                "pack: window at offset {:#x} ({} changed pages over the set)",
                best.0, best.1
            );
            (best.0, w)
        }
    };
    fs::create_dir_all(dst).map_err(|e| e.to_string())?;
    let mut prev: Option<&[u8]> = None;
    let mut total = 0;
    for (i, img) in images.iter().enumerate() {
        let cur = &img[off..off + wlen];
        let (name, data) = match prev {
            None => (format!("{i:04}.raw.zst"), cur.to_vec()),
            Some(p) => (
                format!("{i:04}.xor.zst"),
                cur.iter().zip(p).map(|(a, b)| a ^ b).collect(),
            ),
        };
        let z = zstd::bulk::compress(&data, level).map_err(|e| e.to_string())?;
        total += z.len();
        eprintln!("pack: {name}: {} bytes", z.len());
        fs::write(dst.join(name), z).map_err(|e| e.to_string())?;
        prev = Some(cur);
    }
    eprintln!(
        "pack: {} epochs of {} bytes at offset {off:#x}, {total} bytes packed",
        images.len(),
        wlen
    );
    Ok(())
}

/// `unpack`: restores the `NNNN.raw` images of a packed set.
fn unpack(src: &Path, dst: &Path) -> Res<()> {
    let files = list_sorted(src, &[".raw.zst", ".xor.zst"])?;
    if files.is_empty() {
        return Err(format!("no .raw.zst/.xor.zst files in {}", src.display()));
    }
    fs::create_dir_all(dst).map_err(|e| e.to_string())?;
    let mut prev: Option<Vec<u8>> = None;
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad file name")?;
        let mut data = Vec::new();
        zstd::stream::read::Decoder::new(fs::File::open(f).map_err(|e| e.to_string())?)
            .and_then(|mut d| d.read_to_end(&mut data))
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let (stem, img) = if let Some(stem) = name.strip_suffix(".xor.zst") {
            let p = prev
                .as_ref()
                .ok_or_else(|| format!("{name}: XOR image without a previous image"))?;
            if p.len() != data.len() {
                return Err(format!("{name}: size differs from the previous image"));
            }
            (stem, data.iter().zip(p).map(|(a, b)| a ^ b).collect())
        } else {
            (name.strip_suffix(".raw.zst").unwrap_or(name), data)
        };
        fs::write(dst.join(format!("{stem}.raw")), &img).map_err(|e| e.to_string())?;
        prev = Some(img);
    }
    eprintln!("unpack: {} images into {}", files.len(), dst.display());
    Ok(())
}

/// Usage text.
const USAGE: &str = "usage:
  resilire-capture run --workload pgbench|redis|rustc --out DIR [--mem-mib 384] [--epochs 20]
                       [--interval-ms 100] [--warmup-s 5] [--cpus 2] [--accel tcg|kvm]
  resilire-capture pack SRC DST [--first 0] [--epochs 6] [--window 8M] [--level 19]
  resilire-capture unpack SRC DST";

/// Parses the command line and dispatches.
fn main_inner() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sub = args.first().ok_or(USAGE)?.as_str();
    let mut pos = Vec::new();
    let mut opts = std::collections::HashMap::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if let Some(k) = a.strip_prefix("--") {
            let v = it
                .next()
                .ok_or_else(|| format!("--{k} needs a value\n{USAGE}"))?;
            opts.insert(k.to_string(), v.clone());
        } else {
            pos.push(a.clone());
        }
    }
    let num = |k: &str, d: usize| -> Res<usize> {
        opts.get(k)
            .map_or(Ok(d), |v| v.parse().map_err(|_| format!("bad --{k}")))
    };
    match sub {
        "run" => run(&RunOpts {
            workload: opts.get("workload").cloned().ok_or(USAGE)?,
            out: PathBuf::from(opts.get("out").ok_or(USAGE)?),
            mem_mib: num("mem-mib", 384)?,
            epochs: num("epochs", 20)?,
            interval_ms: num("interval-ms", 100)? as u64,
            warmup_s: num("warmup-s", 5)? as u64,
            cpus: num("cpus", 2)?,
            kvm: opts.get("accel").is_some_and(|a| a == "kvm"),
        }),
        "pack" => {
            let [src, dst] = pos.as_slice() else {
                return Err(USAGE.into());
            };
            let window = opts.get("window").map(|w| parse_size(w)).transpose()?;
            pack(
                Path::new(src),
                Path::new(dst),
                num("first", 0)?,
                num("epochs", 6)?,
                window,
                num("level", 19)? as i32,
            )
        }
        "unpack" => {
            let [src, dst] = pos.as_slice() else {
                return Err(USAGE.into());
            };
            unpack(Path::new(src), Path::new(dst))
        }
        _ => Err(USAGE.into()),
    }
}

fn main() {
    if let Err(e) = main_inner() {
        eprintln!("resilire-capture: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "resilire-capture-test-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn pack_then_unpack_restores_every_byte_of_a_window() {
        let src = scratch("src");
        let mut img = vec![0u8; 64 * PAGE];
        let mut images = Vec::new();
        for e in 0..4u8 {
            // Epoch e changes pages in the second 16-page window only.
            for p in 0..(e as usize + 1) {
                img[(16 + p * 3) * PAGE + e as usize] ^= 0x5a ^ e;
            }
            fs::write(src.join(format!("{e:04}.raw")), &img).unwrap();
            images.push(img.clone());
        }
        let packed = scratch("packed");
        pack(&src, &packed, 0, 4, Some(16 * PAGE), 3).unwrap();
        let out = scratch("out");
        unpack(&packed, &out).unwrap();
        for (e, full) in images.iter().enumerate() {
            let got = fs::read(out.join(format!("{e:04}.raw"))).unwrap();
            assert_eq!(got, &full[16 * PAGE..32 * PAGE], "epoch {e}");
        }
        for d in [src, packed, out] {
            fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn committed_sets_unpack_to_equal_sized_images() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        for (set, mib) in [("pgbench", 16u64), ("redis", 16), ("rustc", 8)] {
            let out = scratch(set);
            unpack(&data.join(set), &out).unwrap();
            let files = list_sorted(&out, &[".raw"]).unwrap();
            assert_eq!(files.len(), 8, "{set}");
            let sizes: Vec<u64> = files
                .iter()
                .map(|f| fs::metadata(f).unwrap().len())
                .collect();
            assert!(sizes.iter().all(|&s| s == mib << 20), "{set}: {sizes:?}");
            // Epochs differ (real workload activity), but never everywhere.
            let imgs: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
            let changed: Vec<usize> = imgs
                .windows(2)
                .map(|w| changed_pages(&w[0], &w[1]))
                .collect();
            assert!(changed.iter().sum::<usize>() > 0, "{set}: {changed:?}");
            assert!(
                changed.iter().all(|&c| c < imgs[0].len() / PAGE),
                "{set}: {changed:?}"
            );
            fs::remove_dir_all(out).unwrap();
        }
    }
}
