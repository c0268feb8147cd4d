//! An in-test primary (resilire-proto session + resilire-codec std encoder) and image generators.
#![allow(dead_code, clippy::result_large_err)]

use resilire_codec::{Encoder, EncoderConfig, PAGE_SIZE};
use resilire_proto::*;
use resilire_receiver::*;
use resilire_store::{HeapFrames, Store};

pub type Rx = Receiver<HeapFrames>;

pub fn key_bytes(name: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        k[i % 32] ^= b.wrapping_mul(31).wrapping_add(i as u8);
    }
    k[31] ^= 0x5a;
    k
}

pub fn receiver(budget: usize, names: &[&str], cfg: ReceiverConfig) -> Rx {
    let keys: Vec<VmKey> = names
        .iter()
        .map(|n| VmKey {
            name: n.to_string(),
            key: key_bytes(n),
        })
        .collect();
    Receiver::new(Store::new(HeapFrames::new(), budget), &keys, cfg).unwrap()
}

/// A small deterministic PRNG.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Mutates an image the way guest memory changes: small edits, rewritten pages, zeroed pages,
/// copies of other pages, block moves, fresh random pages.
pub fn mutate(img: &mut [u8], rng: &mut Rng, n_changes: usize) {
    let pages = img.len() / PAGE_SIZE;
    for _ in 0..n_changes {
        let p = rng.below(pages as u64) as usize;
        let page = p * PAGE_SIZE;
        match rng.below(7) {
            0 => {
                // a few bytes
                for _ in 0..1 + rng.below(8) {
                    let o = rng.below(PAGE_SIZE as u64) as usize;
                    img[page + o] = rng.next() as u8;
                }
            }
            1 => rng.fill(&mut img[page..page + PAGE_SIZE]),
            2 => img[page..page + PAGE_SIZE].fill(0),
            3 => {
                let q = rng.below(pages as u64) as usize * PAGE_SIZE;
                let src = img[q..q + PAGE_SIZE].to_vec();
                img[page..page + PAGE_SIZE].copy_from_slice(&src);
            }
            4 => {
                // a 64-byte block copied from elsewhere
                let q = rng.below((img.len() / 64) as u64) as usize * 64;
                let o = rng.below((PAGE_SIZE / 64) as u64) as usize * 64;
                let src = img[q..q + 64].to_vec();
                img[page + o..page + o + 64].copy_from_slice(&src);
            }
            5 => {
                // a counter-like structure
                for i in 0..PAGE_SIZE / 8 {
                    let o = page + i * 8;
                    let v = u64::from_le_bytes(img[o..o + 8].try_into().unwrap())
                        .wrapping_add(i as u64);
                    img[o..o + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                let o = rng.below(PAGE_SIZE as u64 - 256) as usize;
                rng.fill(&mut img[page + o..page + o + 200]);
            }
        }
    }
}

/// A first image: some random pages, some text-like, many zero.
pub fn initial_image(pages: usize, rng: &mut Rng) -> Vec<u8> {
    let mut img = vec![0u8; pages * PAGE_SIZE];
    for p in 0..pages {
        let s = p * PAGE_SIZE;
        match p % 5 {
            0 => rng.fill(&mut img[s..s + PAGE_SIZE]),
            1 => {
                for (i, b) in img[s..s + PAGE_SIZE].iter_mut().enumerate() {
                    *b = b"resilire page text "[i % 19];
                }
                img[s] = p as u8;
            }
            2 => {}
            3 => rng.fill(&mut img[s..s + 512]),
            _ => {}
        }
    }
    img
}

/// What a delivery brought back from the appliance.
#[derive(Debug, Default)]
pub struct Back {
    pub acks: Vec<u64>,
    pub errors: Vec<(u16, String)>,
    pub heartbeats: usize,
    pub read_data: Vec<(u32, u64, Vec<u8>)>,
}

/// The primary of one protected VM, as the dom0 shim would be.
pub struct Primary {
    pub name: String,
    pub vm: u64,
    pub key: [u8; 32],
    pub pages: u64,
    pub enc: Encoder,
    pub session: Option<Session>,
    pub conn: Option<ConnId>,
    pub next_epoch: u64,
    pub pending: Option<(u64, Vec<u8>)>,
    pub acked: Option<u64>,
    pub acked_image: Vec<u8>,
    salt: u64,
    pub split: usize,
}

impl Primary {
    pub fn new(name: &str, pages: u64, cfg: EncoderConfig) -> Self {
        Primary {
            name: name.to_string(),
            vm: vm_id_of(name),
            key: key_bytes(name),
            pages,
            enc: Encoder::new(cfg, pages).unwrap(),
            session: None,
            conn: None,
            next_epoch: 1,
            pending: None,
            acked: None,
            acked_image: vec![0u8; pages as usize * PAGE_SIZE],
            salt: vm_id_of(name),
            split: 4096,
        }
    }

    /// The HELLO frame of a new connection (a fresh session with a new salt).
    pub fn hello_frame(&mut self) -> Vec<u8> {
        self.salt = self
            .salt
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut salt = [0u8; 32];
        salt[..8].copy_from_slice(&self.salt.to_le_bytes());
        salt[8..16].copy_from_slice(&self.vm.to_le_bytes());
        let mut s = Session::primary(self.vm, Key(self.key), salt);
        let xl = format!(
            "name = \"{}\"\nmemory = {}\n",
            self.name,
            self.pages * 4 / 1024
        );
        let f = s
            .seal(&Message::Hello(Hello {
                vm_uuid: [7; 16],
                name: &self.name,
                mem_pages: self.pages,
                block_size: self.enc.config().block_size as u32,
                group_id: 0,
                features: 0,
                codec_id: 1,
                codec_params: &[],
                xl_config: &xl,
            }))
            .unwrap();
        self.session = Some(s);
        f
    }

    /// Connects: HELLO, WELCOME (reconciling an epoch whose ACK was lost), HEARTBEAT. Returns
    /// the committed epoch WELCOME announced, or the ERROR the appliance sent.
    pub fn connect(&mut self, rx: &mut Rx, now: u64) -> Result<Option<u64>, (u16, String)> {
        let conn = rx.accept(now);
        self.conn = Some(conn);
        let h = self.hello_frame();
        let mut out = Vec::new();
        let r = rx.on_bytes(conn, &h, now, &mut out);
        let s = self.session.as_mut().unwrap();
        s.feed(&out);
        let w = match s.poll().expect("appliance frame") {
            Some(Message::Welcome(w)) => w,
            Some(Message::Error(e)) => {
                assert!(r.is_err());
                return Err((e.code.0, e.reason.to_string()));
            }
            other => panic!("unexpected {other:?} / {r:?}"),
        };
        r.expect("welcome without error");
        self.on_welcome(w.committed_epoch);
        // Prove liveness at once.
        let hb = self
            .session
            .as_mut()
            .unwrap()
            .seal(&Message::Heartbeat(Heartbeat { time_ms: now }))
            .unwrap();
        let back = self.deliver(rx, &hb, now).expect("heartbeat");
        assert_eq!(back.heartbeats, 1);
        Ok(w.committed_epoch)
    }

    /// Reconciles the encoder with the appliance's committed epoch.
    pub fn on_welcome(&mut self, committed: Option<u64>) {
        if let Some((e, img)) = self.pending.take() {
            if committed == Some(e) {
                // The commit happened, only the ACK was lost.
                self.enc.commit_epoch();
                self.acked = Some(e);
                self.acked_image = img;
            } else {
                self.enc.abort_epoch();
            }
        }
        assert_eq!(
            committed, self.acked,
            "{}: appliance and primary disagree on the committed epoch",
            self.name
        );
        self.next_epoch = committed.map_or(1, |e| e + 1);
    }

    /// The frames of the next epoch bringing the appliance to `image`.
    pub fn epoch_bytes(&mut self, image: &[u8]) -> Vec<u8> {
        assert!(self.pending.is_none());
        let dirty: Vec<u64> = (0..self.pages)
            .filter(|&p| {
                let s = p as usize * PAGE_SIZE;
                image[s..s + PAGE_SIZE] != self.enc.shadow()[s..s + PAGE_SIZE]
            })
            .collect();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        self.enc.take_stats();
        self.enc
            .encode_epoch(image, dirty.iter().copied(), &mut |c| {
                chunks.push(c.to_vec())
            });
        let st = self.enc.take_stats();
        let records = st.zero_pages + st.raw_pages + st.ops_pages + st.zops_pages;
        let epoch = self.next_epoch;
        let s = self.session.as_mut().unwrap();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.seal_into(
                &Message::Epoch(EpochData {
                    epoch,
                    chunk_index: i as u32,
                    data: c,
                }),
                &mut out,
            )
            .unwrap();
        }
        let commit = Commit {
            epoch,
            chunks: chunks.len() as u32,
            pages: records,
            digest: [0; 32],
        };
        s.seal_into(&Message::Commit(commit), &mut out).unwrap();
        self.pending = Some((epoch, image.to_vec()));
        out
    }

    /// Feeds `bytes` to the appliance in pieces of `self.split`, and what comes back to the
    /// session. ACKs resolve the pending epoch.
    pub fn deliver(
        &mut self,
        rx: &mut Rx,
        bytes: &[u8],
        now: u64,
    ) -> Result<Back, (ConnError, Back)> {
        let conn = self.conn.unwrap();
        let mut back = Back::default();
        let mut out = Vec::new();
        let mut res = Ok(());
        for piece in bytes.chunks(self.split.max(1)) {
            res = rx.on_bytes(conn, piece, now, &mut out);
            if res.is_err() {
                break;
            }
        }
        self.absorb(&out, &mut back);
        match res {
            Ok(()) => Ok(back),
            Err(e) => {
                self.conn = None;
                self.session = None;
                Err((e, back))
            }
        }
    }

    /// Reads the appliance's answer.
    pub fn absorb(&mut self, out: &[u8], back: &mut Back) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.feed(out);
        let mut acks = Vec::new();
        let mut welcome = None;
        loop {
            match s.poll() {
                Ok(Some(Message::Welcome(w))) => welcome = Some(w.committed_epoch),
                Ok(Some(Message::Ack(a))) => acks.push(a.epoch),
                Ok(Some(Message::Error(e))) => back.errors.push((e.code.0, e.reason.to_string())),
                Ok(Some(Message::Heartbeat(_))) => back.heartbeats += 1,
                Ok(Some(Message::ReadReply(r))) => {
                    back.read_data
                        .push((r.request_id, r.first_pfn, r.data.to_vec()))
                }
                Ok(Some(m)) => panic!("unexpected {m:?}"),
                Ok(None) => break,
                Err(e) => panic!("primary session error {e}"),
            }
        }
        if let Some(w) = welcome {
            self.on_welcome(w);
        }
        for a in acks {
            let (e, img) = self.pending.take().expect("ACK without a pending epoch");
            assert_eq!(a, e);
            self.enc.commit_epoch();
            self.acked = Some(e);
            self.acked_image = img;
            self.next_epoch = e + 1;
            back.acks.push(a);
        }
    }

    /// Sends one epoch bringing the appliance to `image` and expects its ACK.
    pub fn sync(&mut self, rx: &mut Rx, image: &[u8], now: u64) {
        let b = self.epoch_bytes(image);
        let back = self
            .deliver(rx, &b, now)
            .unwrap_or_else(|(e, b)| panic!("{}: {e} {:?}", self.name, b.errors));
        assert_eq!(back.acks.len(), 1, "{}: {:?}", self.name, back);
    }

    /// The connection was cut.
    pub fn cut(&mut self, rx: &mut Rx, _now: u64) {
        if let Some(c) = self.conn.take() {
            rx.on_close(c);
        }
        self.session = None;
    }

    /// Reads the whole committed image back through READ.
    pub fn read_back(&mut self, rx: &mut Rx, now: u64) -> Vec<u8> {
        let mut img = Vec::with_capacity(self.pages as usize * PAGE_SIZE);
        let mut pfn = 0u64;
        let mut id = 100u32;
        while pfn < self.pages {
            let count = (self.pages - pfn).min(MAX_READ_PAGES as u64) as u32;
            let f = self
                .session
                .as_mut()
                .unwrap()
                .seal(&Message::Read(Read {
                    request_id: id,
                    first_pfn: pfn,
                    count,
                }))
                .unwrap();
            let back = self.deliver(rx, &f, now).expect("read");
            assert_eq!(back.read_data.len(), 1);
            let (rid, first, data) = &back.read_data[0];
            assert_eq!(
                (*rid, *first, data.len()),
                (id, pfn, count as usize * PAGE_SIZE)
            );
            img.extend_from_slice(data);
            pfn += u64::from(count);
            id += 1;
        }
        img
    }
}

/// The committed image of `vm` read straight from the store.
pub fn store_image(rx: &mut Rx, vm: u64) -> Vec<u8> {
    let pages = rx.store().page_count(vm).unwrap();
    let mut img = vec![0u8; pages as usize * PAGE_SIZE];
    for (p, page) in img.chunks_exact_mut(PAGE_SIZE).enumerate() {
        rx.read_page(vm, p as u64, page.try_into().unwrap())
            .unwrap();
    }
    img
}

pub fn small_chunks(block_size: usize) -> EncoderConfig {
    EncoderConfig {
        block_size,
        max_chunk_len: 16 * 1024,
        batch_len: 8 * 1024,
        ..EncoderConfig::default()
    }
}

/// What the store holds, independent of table capacities: page objects, references, frames.
pub fn footprint(rx: &Rx) -> (resilire_store::StoreStats, usize) {
    (rx.store().stats(), rx.store().allocator().in_use())
}
