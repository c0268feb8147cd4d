//! Shipping epochs to a backup appliance: the primary's end of the wire
//! protocol (crates/proto) carrying FGBI-encoded epochs (crates/codec).
//!
//! One `Shipper` per protected VM and connection. An epoch is encoded and
//! sent in chunks, then COMMIT; the encoder's epoch is committed only when
//! the appliance ACKs it, and rolled back if the connection dies first, so
//! the encoder's shadow always equals what the appliance holds committed.

use anyhow::{bail, Context, Result};
use resilire_codec::{Encoder, EncoderConfig};
use resilire_proto::{
    Commit, EpochData, ErrorCode, Hello, Key, Message, Read, Session, SingleKey, Welcome, PAGE_SIZE,
};
use std::io::{Read as _, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Who the protected VM is, as the HELLO tells the appliance.
pub struct VmIdentity {
    /// The numeric id the appliance knows the VM's key by.
    pub vm_id: u64,
    /// The VM's UUID.
    pub uuid: [u8; 16],
    /// Its name.
    pub name: String,
    /// Pages of the image shipped (dense: index 0..pages).
    pub pages: u64,
    /// The domain's xl configuration, to recreate it at failover.
    pub xl_config: String,
}

/// Figures of one shipped epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct EpochStats {
    /// Pages offered as dirty.
    pub dirty: u64,
    /// Page records encoded (dirty pages whose content really changed).
    pub records: u64,
    /// Bytes of codec output.
    pub encoded: u64,
    /// Bytes put on the wire (frames, including headers and tags).
    pub wire: u64,
    /// Number of EPOCH chunks.
    pub chunks: u32,
}

/// A connection to an appliance for one VM.
pub struct Shipper {
    stream: TcpStream,
    session: Session<SingleKey>,
    encoder: Encoder,
    /// Epoch number of the next epoch sent.
    next_epoch: u64,
    /// Figures of the epoch being sent.
    open: EpochStats,
    /// What WELCOME said.
    pub welcome: Welcome,
}

fn random_salt() -> Result<[u8; 32]> {
    let mut salt = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

impl Shipper {
    /// Connects, says HELLO and waits for WELCOME. A fresh shipper holds no
    /// shadow: its first epoch carries every page (a fresh synchronisation),
    /// numbered after the appliance's last committed epoch.
    pub fn connect(
        addr: &str,
        vm: &VmIdentity,
        key: [u8; 32],
        block_size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let sock = addr
            .parse::<std::net::SocketAddr>()
            .with_context(|| format!("backup address {addr} is not ip:port"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        // An appliance that stops reading must not hang the primary: a
        // write that cannot progress for this long loses the backup.
        stream.set_write_timeout(Some(timeout))?;
        let cfg = EncoderConfig {
            block_size,
            ..EncoderConfig::default()
        };
        let encoder = Encoder::new(cfg, vm.pages)
            .map_err(|e| anyhow::anyhow!("block size {}: not allowed", e.0))?;
        let mut session = Session::primary(vm.vm_id, Key(key), random_salt()?);
        let hello = Message::Hello(Hello {
            vm_uuid: vm.uuid,
            name: &vm.name,
            mem_pages: vm.pages,
            block_size: block_size as u32,
            group_id: 0,
            features: 0,
            // The codec id is the FGBI format version the encoder writes.
            codec_id: resilire_codec::FORMAT_VERSION,
            codec_params: &[],
            xl_config: &vm.xl_config,
        });
        let frame = session
            .seal(&hello)
            .map_err(|e| anyhow::anyhow!("sealing HELLO: {e:?}"))?;
        let mut sh = Shipper {
            stream,
            session,
            encoder,
            next_epoch: 1,
            open: EpochStats::default(),
            welcome: Welcome {
                committed_epoch: None,
                features: 0,
                max_chunk: 0,
            },
        };
        sh.stream.write_all(&frame)?;
        let welcome = sh.receive(|m| match m {
            Message::Welcome(w) => Ok(Some(*w)),
            other => bail!("expected WELCOME, got {:?}", other.kind()),
        })?;
        sh.next_epoch = welcome.committed_epoch.map_or(1, |e| e + 1);
        // Chunks no larger than the appliance accepts (WELCOME's max_chunk):
        // a fresh encoder holds nothing yet, so it is simply made anew.
        if welcome.max_chunk > 0 {
            let cfg = EncoderConfig {
                block_size,
                max_chunk_len: (welcome.max_chunk as usize)
                    .min(EncoderConfig::default().max_chunk_len),
                ..EncoderConfig::default()
            };
            sh.encoder = Encoder::new(cfg, vm.pages)
                .map_err(|e| anyhow::anyhow!("block size {}: not allowed", e.0))?;
        }
        sh.welcome = welcome;
        Ok(sh)
    }

    /// Waits for messages until `f` returns Some; ERROR and BYE end it.
    fn receive<T>(&mut self, mut f: impl FnMut(&Message<'_>) -> Result<Option<T>>) -> Result<T> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(m) = self
                .session
                .poll()
                .map_err(|e| anyhow::anyhow!("from the appliance: {e:?}"))?
            {
                match &m {
                    Message::Error(e) => {
                        bail!("appliance refused: {} (code {})", e.reason, e.code.0)
                    }
                    Message::Bye(b) => bail!("appliance said BYE (code {})", b.code.0),
                    Message::Heartbeat(_) => continue,
                    _ => {}
                }
                if let Some(v) = f(&m)? {
                    return Ok(v);
                }
            }
            // A signal (protect's SIGTERM handler) interrupts a read on a
            // socket with a timeout even under SA_RESTART: read again.
            let n = match self.stream.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.context("reading from the appliance")?,
            };
            if n == 0 {
                bail!("the appliance closed the connection");
            }
            self.session.feed(&buf[..n]);
        }
    }

    fn send(&mut self, m: &Message<'_>, wire: &mut u64) -> Result<()> {
        let frame = self
            .session
            .seal(m)
            .map_err(|e| anyhow::anyhow!("sealing {:?}: {e:?}", m.kind()))?;
        *wire += frame.len() as u64;
        self.stream
            .write_all(&frame)
            .context("sending to the appliance")
    }

    /// Changes how long a read or a write may make no progress before the
    /// backup counts as lost.
    pub fn set_io_timeout(&self, timeout: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    /// The epoch number the next [`Shipper::send_epoch`] uses.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch
    }

    /// Encodes and sends one epoch: the pages `dirty` (dense indices,
    /// ascending) of `image`, then COMMIT. Does not wait for the ACK.
    pub fn send_epoch(&mut self, image: &[u8], dirty: &[u64]) -> Result<EpochStats> {
        self.send_pages(image, dirty)?;
        self.commit()
    }

    /// Sends pages as part of the open epoch (no COMMIT yet): what the
    /// initial synchronisation does with its live pre-copy rounds, which the
    /// appliance stages until the consistent final round's COMMIT.
    pub fn send_pages(&mut self, image: &[u8], dirty: &[u64]) -> Result<()> {
        let epoch = self.next_epoch;
        self.encoder.take_stats();
        // Each chunk goes out as soon as the encoder produces it: a whole
        // memory's worth encoded first would leave the appliance without a
        // frame for seconds (it drops connections silent for that long) and
        // hold the whole encoded epoch in memory.
        let Shipper {
            stream,
            session,
            encoder,
            open,
            ..
        } = self;
        let mut failed: Option<anyhow::Error> = None;
        encoder.encode_epoch(image, dirty.iter().copied(), &mut |c: &[u8]| {
            if failed.is_some() {
                return;
            }
            open.encoded += c.len() as u64;
            let m = Message::Epoch(EpochData {
                epoch,
                chunk_index: open.chunks,
                data: c,
            });
            match session.seal(&m) {
                Ok(frame) => {
                    open.wire += frame.len() as u64;
                    match stream.write_all(&frame) {
                        Ok(()) => open.chunks += 1,
                        Err(e) => {
                            failed = Some(anyhow::Error::new(e).context("sending to the appliance"))
                        }
                    }
                }
                Err(e) => failed = Some(anyhow::anyhow!("sealing an EPOCH chunk: {e:?}")),
            }
        });
        if let Some(e) = failed {
            self.encoder.abort_epoch();
            return Err(e);
        }
        let enc = self.encoder.take_stats();
        // COMMIT counts the page records the epoch carries: dirty pages whose
        // content did not change after all produce none.
        self.open.records += enc.pages_in - enc.pages_unchanged;
        self.open.dirty += dirty.len() as u64;
        Ok(())
    }

    /// Sends COMMIT for the open epoch; returns its figures.
    pub fn commit(&mut self) -> Result<EpochStats> {
        let mut st = std::mem::take(&mut self.open);
        let commit = Message::Commit(Commit {
            epoch: self.next_epoch,
            chunks: st.chunks,
            pages: st.records,
            digest: [0; 32],
        });
        let mut wire = 0;
        if let Err(e) = self.send(&commit, &mut wire) {
            self.encoder.abort_epoch();
            return Err(e);
        }
        st.wire += wire;
        Ok(st)
    }

    /// Waits for the ACK of the epoch last sent; then the encoder commits it.
    pub fn wait_ack(&mut self) -> Result<Duration> {
        let epoch = self.next_epoch;
        let t0 = Instant::now();
        let r = self.receive(|m| match m {
            Message::Ack(a) if a.epoch == epoch => Ok(Some(())),
            Message::Ack(a) => bail!("ACK for epoch {} while waiting for {epoch}", a.epoch),
            other => bail!("expected ACK, got {:?}", other.kind()),
        });
        match r {
            Ok(()) => {
                self.encoder.commit_epoch();
                self.next_epoch += 1;
                Ok(t0.elapsed())
            }
            Err(e) => {
                self.encoder.abort_epoch();
                Err(e)
            }
        }
    }

    /// Reads committed pages back from the appliance.
    pub fn read_pages(&mut self, first_pfn: u64, count: u32) -> Result<Vec<u8>> {
        let request_id = (first_pfn as u32) ^ count;
        let mut wire = 0;
        self.send(
            &Message::Read(Read {
                request_id,
                first_pfn,
                count,
            }),
            &mut wire,
        )?;
        self.receive(|m| match m {
            Message::ReadReply(r) if r.request_id == request_id => {
                if r.data.len() != count as usize * PAGE_SIZE {
                    bail!("READ_REPLY with {} bytes for {count} pages", r.data.len());
                }
                Ok(Some(r.data.to_vec()))
            }
            other => bail!("expected READ_REPLY, got {:?}", other.kind()),
        })
    }

    /// Reads the whole committed image (`pages` pages) back, `per_read`
    /// pages per READ (each reply is one allocation in the appliance's heap).
    pub fn read_image(&mut self, pages: u64, per_read: u32) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(pages as usize * PAGE_SIZE);
        let mut first = 0u64;
        while first < pages {
            let n = (pages - first).min(u64::from(per_read.max(1))) as u32;
            out.extend(self.read_pages(first, n)?);
            first += u64::from(n);
        }
        Ok(out)
    }

    /// Says BYE (orderly end).
    pub fn close(mut self) -> Result<()> {
        let mut wire = 0;
        self.send(
            &Message::Bye(resilire_proto::Bye {
                code: ErrorCode::NONE,
            }),
            &mut wire,
        )
    }
}
