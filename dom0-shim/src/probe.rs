//! `resilire-shim probe-appliance`: crafted connections that check how the
//! appliance answers what a real primary never sends (forged, replayed and
//! malformed frames, a VM too large for it, an epoch cut in the middle), and
//! a throughput probe that measures receive-and-commit alone.
//!
//! Every probe prints one `probe:` line per check, saying what was sent and
//! what came back, and fails when the appliance did not answer as the
//! protocol says (SPEC.md, crates/receiver/README.md).

use anyhow::{bail, Context, Result};
use resilire_codec::{Encoder, EncoderConfig, PAGE_SIZE};
use resilire_proto::{
    Commit, EpochData, Heartbeat, Hello, Key, Message, Session, SingleKey, Welcome, HEADER_LEN,
    SALT_LEN,
};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// What the probes need to know about the VM they pose as.
pub struct Target {
    /// The appliance's address.
    pub addr: String,
    /// The VM's configured name (its wire id is `vm_id_of(name)`).
    pub name: String,
    /// Its key.
    pub key: [u8; 32],
    /// Pages announced in HELLO (must match an image the appliance holds).
    pub pages: u64,
}

/// How a connection ended, seen from the probe.
#[derive(Debug, Default)]
struct Ending {
    /// ERROR frames received (code, reason).
    errors: Vec<(u16, String)>,
    /// Other messages received (kinds).
    others: Vec<String>,
    /// The appliance closed the connection.
    closed: bool,
    /// Bytes that did not open as frames (the probe's session refused them).
    undecodable: Option<String>,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (c, r) in &self.errors {
            write!(f, "ERROR {c} '{r}', ")?;
        }
        for o in &self.others {
            write!(f, "{o}, ")?;
        }
        if let Some(u) = &self.undecodable {
            write!(f, "undecodable reply ({u}), ")?;
        }
        write!(
            f,
            "{}",
            if self.closed {
                "connection closed by the appliance"
            } else {
                "connection still open"
            }
        )
    }
}

struct Probe {
    stream: TcpStream,
    session: Session<SingleKey>,
}

fn salt() -> Result<[u8; 32]> {
    let mut s = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut s)?;
    Ok(s)
}

fn hello_msg(name: &str, pages: u64) -> Hello<'_> {
    Hello {
        vm_uuid: [0x5a; 16],
        name,
        mem_pages: pages,
        block_size: 64,
        group_id: 0,
        features: 0,
        codec_id: 1,
        codec_params: &[],
        xl_config: "",
    }
}

impl Probe {
    fn connect(t: &Target, key: [u8; 32]) -> Result<Probe> {
        let sock: std::net::SocketAddr = t
            .addr
            .parse()
            .with_context(|| format!("{} is not ip:port", t.addr))?;
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(10))
            .with_context(|| format!("connecting to {}", t.addr))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_write_timeout(Some(Duration::from_secs(20)))?;
        let vm_id = resilire_receiver::vm_id_of(&t.name);
        Ok(Probe {
            stream,
            session: Session::primary(vm_id, Key(key), salt()?),
        })
    }

    fn seal(&mut self, m: &Message<'_>) -> Result<Vec<u8>> {
        self.session
            .seal(m)
            .map_err(|e| anyhow::anyhow!("sealing {:?}: {e}", m.kind()))
    }

    /// HELLO, then WELCOME (or the appliance's refusal).
    fn hello(&mut self, name: &str, pages: u64) -> Result<std::result::Result<Welcome, Ending>> {
        let f = self.seal(&Message::Hello(hello_msg(name, pages)))?;
        self.stream.write_all(&f)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.stream.read(&mut buf).context("waiting for WELCOME")?;
            if n == 0 {
                return Ok(Err(Ending {
                    closed: true,
                    ..Ending::default()
                }));
            }
            self.session.feed(&buf[..n]);
            let first = match self.session.poll() {
                Ok(Some(Message::Welcome(w))) => return Ok(Ok(w)),
                Ok(Some(Message::Error(e))) => Some((e.code.0, e.reason.to_string())),
                Ok(Some(m)) => bail!("expected WELCOME, got {:?}", m.kind()),
                Err(e) => bail!("the appliance's first frame did not open: {e}"),
                Ok(None) => continue,
            };
            return Ok(Err(self.ending_after(first)));
        }
    }

    /// A HELLO that authenticates and a HEARTBEAT that proves the probe live; returns the
    /// committed epoch WELCOME announced.
    fn live(&mut self, name: &str, pages: u64) -> Result<Welcome> {
        let w = match self.hello(name, pages)? {
            Ok(w) => w,
            Err(end) => bail!("a genuine HELLO was refused: {end}"),
        };
        let hb = self.seal(&Message::Heartbeat(Heartbeat { time_ms: 1 }))?;
        self.stream.write_all(&hb)?;
        self.expect_heartbeat()?;
        Ok(w)
    }

    fn expect_heartbeat(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.session.poll() {
                Ok(Some(Message::Heartbeat(_))) => return Ok(()),
                Ok(Some(m)) => bail!("expected HEARTBEAT, got {:?}", m.kind()),
                Err(e) => bail!("reply did not open: {e}"),
                Ok(None) => {}
            }
            let n = self
                .stream
                .read(&mut buf)
                .context("waiting for HEARTBEAT")?;
            if n == 0 {
                bail!("closed while waiting for HEARTBEAT");
            }
            self.session.feed(&buf[..n]);
        }
    }

    /// Reads until the appliance closes (or 20 s pass), collecting what it said.
    fn ending_after(&mut self, first: Option<(u16, String)>) -> Ending {
        let mut end = Ending::default();
        if let Some(f) = first {
            end.errors.push(f);
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            loop {
                match self.session.poll() {
                    Ok(Some(Message::Error(e))) => {
                        end.errors.push((e.code.0, e.reason.to_string()))
                    }
                    Ok(Some(m)) => end.others.push(format!("{:?}", m.kind())),
                    Ok(None) => break,
                    Err(e) => {
                        end.undecodable = Some(e.to_string());
                        break;
                    }
                }
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    end.closed = true;
                    return end;
                }
                Ok(n) => {
                    if end.undecodable.is_none() {
                        self.session.feed(&buf[..n]);
                    }
                }
                Err(_) => return end,
            }
        }
    }

    /// Sends raw bytes and reports how the connection ends.
    fn send_and_end(&mut self, bytes: &[u8]) -> Result<Ending> {
        self.stream.write_all(bytes)?;
        Ok(self.ending_after(None))
    }
}

fn check(ok: bool, what: &str, end: &Ending) -> Result<()> {
    println!(
        "probe: {what}: {end}{}",
        if ok { "" } else { "  <-- NOT as specified" }
    );
    if !ok {
        bail!("{what}: the appliance answered {end}");
    }
    Ok(())
}

fn error_with(end: &Ending, code: u16, words: &str) -> bool {
    end.closed
        && end
            .errors
            .iter()
            .any(|(c, r)| *c == code && r.to_lowercase().contains(words))
}

/// Forged frames: a HELLO sealed with another key (closed, nothing sent to an unauthenticated
/// peer) and a frame with a corrupted tag after WELCOME (ERROR, closed).
pub fn forged(t: &Target) -> Result<()> {
    let mut wrong = t.key;
    wrong[0] ^= 0xff;
    let mut p = Probe::connect(t, wrong)?;
    let f = p.seal(&Message::Hello(hello_msg(&t.name, t.pages)))?;
    let end = p.send_and_end(&f)?;
    check(
        end.closed && end.errors.is_empty() && end.others.is_empty(),
        "HELLO sealed with a wrong key",
        &end,
    )?;

    let mut p = Probe::connect(t, t.key)?;
    p.live(&t.name, t.pages)?;
    let mut hb = p.seal(&Message::Heartbeat(Heartbeat { time_ms: 2 }))?;
    let last = hb.len() - 1;
    hb[last] ^= 0x01; // the tag
    let end = p.send_and_end(&hb)?;
    check(
        error_with(&end, 1, "authentication"),
        "HEARTBEAT with a corrupted tag after WELCOME",
        &end,
    )
}

/// Replays: a frame sent twice on one connection (ERROR: sequence), and a recorded connection
/// replayed on a new one (its HELLO authenticates and gets WELCOME; its next frame does not).
pub fn replayed(t: &Target) -> Result<()> {
    let mut p = Probe::connect(t, t.key)?;
    let hello = p.seal(&Message::Hello(hello_msg(&t.name, t.pages)))?;
    p.stream.write_all(&hello)?;
    // WELCOME
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match p.session.poll() {
            Ok(Some(Message::Welcome(_))) => break,
            Ok(Some(m)) => bail!("expected WELCOME, got {:?}", m.kind()),
            Err(e) => bail!("{e}"),
            Ok(None) => {}
        }
        let n = p.stream.read(&mut buf)?;
        if n == 0 {
            bail!("closed before WELCOME");
        }
        p.session.feed(&buf[..n]);
    }
    let hb = p.seal(&Message::Heartbeat(Heartbeat { time_ms: 3 }))?;
    p.stream.write_all(&hb)?;
    p.expect_heartbeat()?;
    let end = p.send_and_end(&hb)?;
    check(
        error_with(&end, 1, "sequence"),
        "the same HEARTBEAT frame sent twice",
        &end,
    )?;

    // The recorded HELLO + HEARTBEAT on a new connection.
    let mut q = Probe::connect(t, t.key)?;
    let mut rec = hello.clone();
    rec.extend_from_slice(&hb);
    q.stream.write_all(&rec)?;
    // The probe's own session cannot open the appliance's answer (it is bound to the recorded
    // salt, which this session does not have): count frames by their clear headers.
    let mut got = Vec::new();
    let mut closed = false;
    loop {
        match q.stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let kinds = frame_kinds(&got);
    let end = Ending {
        closed,
        others: kinds
            .iter()
            .map(|k| format!("frame kind {k:#04x}"))
            .collect(),
        ..Ending::default()
    };
    // WELCOME (0x02) for the replayed HELLO, then ERROR (0x3e) for the frame that fails.
    check(
        closed && kinds == [0x02, 0x3e],
        "a recorded connection (HELLO, HEARTBEAT) replayed",
        &end,
    )
}

/// The kind bytes of the frames in `bytes`, by their clear headers.
fn frame_kinds(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut o = 0;
    while o + HEADER_LEN <= bytes.len() {
        let seq = u64::from_le_bytes(bytes[o + 16..o + 24].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[o + 24..o + 28].try_into().unwrap()) as usize;
        v.push(bytes[o + 5]);
        o += HEADER_LEN + len + if seq == 0 { SALT_LEN } else { 0 };
    }
    v
}

/// Malformed input: garbage instead of a HELLO (closed), a frame with a bad magic after
/// WELCOME (ERROR, closed), a frame of an unknown kind (ERROR, closed).
pub fn malformed(t: &Target) -> Result<()> {
    let mut p = Probe::connect(t, t.key)?;
    let end = p.send_and_end(&[0x55u8; 64])?;
    check(
        end.closed && end.errors.is_empty(),
        "64 bytes of garbage instead of HELLO",
        &end,
    )?;

    let mut p = Probe::connect(t, t.key)?;
    p.live(&t.name, t.pages)?;
    let mut f = p.seal(&Message::Heartbeat(Heartbeat { time_ms: 4 }))?;
    f[0] = b'X';
    let end = p.send_and_end(&f)?;
    check(
        error_with(&end, 1, "magic"),
        "a frame with a bad magic after WELCOME",
        &end,
    )?;

    let mut p = Probe::connect(t, t.key)?;
    p.live(&t.name, t.pages)?;
    let mut f = p.seal(&Message::Heartbeat(Heartbeat { time_ms: 5 }))?;
    f[5] = 0xf7; // an experimental kind nobody negotiated
    let end = p.send_and_end(&f)?;
    check(
        error_with(&end, 1, "kind"),
        "a frame of an unknown kind after WELCOME",
        &end,
    )
}

/// A VM whose announced memory does not fit: ERROR NO_MEMORY (3) with the sizes.
pub fn too_big(t: &Target) -> Result<()> {
    let mut p = Probe::connect(t, t.key)?;
    let end = match p.hello(&t.name, t.pages)? {
        Ok(w) => bail!(
            "a HELLO of {} pages was welcomed (committed {:?})",
            t.pages,
            w.committed_epoch
        ),
        Err(e) => e,
    };
    check(
        error_with(&end, 3, "does not fit") || error_with(&end, 3, "memory"),
        &format!(
            "HELLO of VM '{}' with {} MiB of memory",
            t.name,
            (t.pages * PAGE_SIZE as u64) >> 20
        ),
        &end,
    )
}

/// Connections of several VMs at once, each proven live and then held: reports how many the
/// appliance admits before it refuses one (NO_MEMORY) — the heap set aside for connections.
pub fn hold(targets: &[Target], hold_s: u64) -> Result<()> {
    let mut held: Vec<Probe> = Vec::new();
    for t in targets {
        // Keep the held ones alive (the appliance closes a primary silent for 5 s).
        for h in held.iter_mut() {
            let hb = h.seal(&Message::Heartbeat(Heartbeat { time_ms: 7 }))?;
            h.stream.write_all(&hb)?;
        }
        let mut p = Probe::connect(t, t.key)?;
        match p.hello(&t.name, t.pages)? {
            Ok(w) => {
                let hb = p.seal(&Message::Heartbeat(Heartbeat { time_ms: 6 }))?;
                p.stream.write_all(&hb)?;
                p.expect_heartbeat()?;
                println!(
                    "probe: VM '{}' admitted (committed epoch {:?})",
                    t.name, w.committed_epoch
                );
                held.push(p);
            }
            Err(end) => {
                println!("probe: VM '{}' refused: {end}", t.name);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(hold_s));
    for p in held {
        let _ = p.stream.shutdown(Shutdown::Both);
    }
    Ok(())
}

fn read_image(path: &str, pages: u64) -> Result<Vec<u8>> {
    let img = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    if img.len() as u64 != pages * PAGE_SIZE as u64 {
        bail!("{path}: {} bytes, expected {pages} pages", img.len());
    }
    Ok(img)
}

/// Sends the first `chunks` chunks of a full epoch of `image` (never its COMMIT), then cuts
/// the connection. The appliance must discard it and keep its committed epoch.
pub fn cut(t: &Target, image: &str, chunks: usize) -> Result<()> {
    let img = read_image(image, t.pages)?;
    let mut p = Probe::connect(t, t.key)?;
    let w = p.live(&t.name, t.pages)?;
    let epoch = w.committed_epoch.map_or(1, |e| e + 1);
    let cfg = EncoderConfig {
        block_size: 64,
        max_chunk_len: w.max_chunk.max(1) as usize,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, t.pages).map_err(|e| anyhow::anyhow!("block size {}", e.0))?;
    let mut all: Vec<Vec<u8>> = Vec::new();
    enc.encode_epoch(&img, 0..t.pages, &mut |c| all.push(c.to_vec()));
    let n = chunks.min(all.len().saturating_sub(1)).max(1);
    let mut sent = 0usize;
    for (i, c) in all.iter().take(n).enumerate() {
        let f = p.seal(&Message::Epoch(EpochData {
            epoch,
            chunk_index: i as u32,
            data: c,
        }))?;
        p.stream.write_all(&f)?;
        sent += f.len();
    }
    // Let the bytes arrive before the cut (a reset could overtake them otherwise).
    std::thread::sleep(Duration::from_millis(1500));
    p.stream.shutdown(Shutdown::Both)?;
    println!(
        "probe: epoch {epoch}: sent {n} of {} chunks ({sent} bytes) of a full epoch of {image}, no COMMIT, connection cut; \
         the appliance held epoch {:?}",
        all.len(),
        w.committed_epoch
    );
    Ok(())
}

/// Receive-and-commit throughput: the epochs of `images` (the first one full) are encoded
/// before the connection is made; after WELCOME a writer thread seals and sends them back to
/// back (sealing is timed apart, to show it is not what limits the figure) while this thread
/// reads the ACKs; the clock stops at the last ACK. Prints wire bytes / time, the figure
/// comparable to `net-blast`.
pub fn throughput(t: &Target, images: &[String]) -> Result<f64> {
    use std::sync::{Arc, Mutex};
    let cfg = EncoderConfig {
        block_size: 64,
        max_chunk_len: resilire_proto::MAX_CHUNK,
        ..EncoderConfig::default()
    };
    let mut enc = Encoder::new(cfg, t.pages).map_err(|e| anyhow::anyhow!("block size {}", e.0))?;
    // (chunks, page records) per epoch
    let mut epochs: Vec<(Vec<Vec<u8>>, u64)> = Vec::new();
    let mut prev: Option<Vec<u8>> = None;
    let mut raw = 0u64;
    let t_enc = Instant::now();
    for path in images {
        let img = read_image(path, t.pages)?;
        let dirty: Vec<u64> = match &prev {
            None => (0..t.pages).collect(),
            Some(old) => (0..t.pages)
                .filter(|&q| {
                    let s = q as usize * PAGE_SIZE;
                    img[s..s + PAGE_SIZE] != old[s..s + PAGE_SIZE]
                })
                .collect(),
        };
        raw += dirty.len() as u64 * PAGE_SIZE as u64;
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        enc.take_stats();
        enc.encode_epoch(&img, dirty.iter().copied(), &mut |c| {
            chunks.push(c.to_vec())
        });
        let st = enc.take_stats();
        enc.commit_epoch();
        epochs.push((chunks, st.pages_in - st.pages_unchanged));
        prev = Some(img);
    }
    let encoded: usize = epochs
        .iter()
        .flat_map(|(c, _)| c.iter().map(Vec::len))
        .sum();
    println!(
        "probe: {} epochs encoded in {:.1}s: {:.1} MiB of dirty pages, {:.1} MiB encoded",
        images.len(),
        t_enc.elapsed().as_secs_f64(),
        raw as f64 / 1048576.0,
        encoded as f64 / 1048576.0
    );

    let mut p = Probe::connect(t, t.key)?;
    let w = p.live(&t.name, t.pages)?;
    // A full 16 MiB epoch over a slow lab network takes a while to be ACKed.
    p.stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    p.stream.set_write_timeout(Some(Duration::from_secs(120)))?;
    if (w.max_chunk as usize) < resilire_proto::MAX_CHUNK {
        bail!(
            "the appliance takes chunks of at most {} bytes",
            w.max_chunk
        );
    }
    let first = w.committed_epoch.map_or(1, |e| e + 1);
    let last = first + epochs.len() as u64 - 1;
    let session = Arc::new(Mutex::new(p.session));
    let mut ws = p.stream.try_clone()?;
    let wsession = Arc::clone(&session);
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || -> Result<(usize, Duration)> {
        let (mut sent, mut sealing) = (0usize, Duration::ZERO);
        let mut frame = Vec::with_capacity(resilire_proto::MAX_CHUNK + 4096);
        for (i, (chunks, records)) in epochs.iter().enumerate() {
            let epoch = first + i as u64;
            let n = chunks.len();
            for k in 0..=n {
                frame.clear();
                let ts = Instant::now();
                {
                    let mut s = wsession.lock().map_err(|_| anyhow::anyhow!("lock"))?;
                    let m = match chunks.get(k) {
                        Some(data) => Message::Epoch(EpochData {
                            epoch,
                            chunk_index: k as u32,
                            data,
                        }),
                        None => Message::Commit(Commit {
                            epoch,
                            chunks: n as u32,
                            pages: *records,
                            digest: [0; 32],
                        }),
                    };
                    s.seal_into(&m, &mut frame)
                        .map_err(|e| anyhow::anyhow!("sealing: {e}"))?;
                }
                sealing += ts.elapsed();
                ws.write_all(&frame).context("sending")?;
                sent += frame.len();
            }
        }
        Ok((sent, sealing))
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut acked = None;
    while acked != Some(last) {
        let n = p.stream.read(&mut buf).context("waiting for ACKs")?;
        if n == 0 {
            bail!("the appliance closed the connection (last ACK {acked:?})");
        }
        let mut s = session.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        s.feed(&buf[..n]);
        loop {
            match s.poll() {
                Ok(Some(Message::Ack(a))) => acked = Some(a.epoch),
                Ok(Some(Message::Error(e))) => {
                    bail!("appliance refused: {} (code {})", e.reason, e.code.0)
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => bail!("{e}"),
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (sent, sealing) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let rate = sent as f64 / 1048576.0 / secs;
    println!(
        "probe: throughput: epochs {first}..={last}, {:.1} MiB on the wire received and committed in {secs:.2}s: {rate:.1} MiB/s \
         ({:.1} MiB/s of dirty pages; the sender spent {:.2}s sealing)",
        sent as f64 / 1048576.0,
        raw as f64 / 1048576.0 / secs,
        sealing.as_secs_f64()
    );
    let _ = p.stream.shutdown(Shutdown::Both);
    Ok(rate)
}
