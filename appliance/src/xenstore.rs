//! A xenstore client, independent of how bytes reach the daemon.
//!
//! [`Client`] speaks the protocol of [`crate::xs_wire`] over any [`Transport`]:
//! in the appliance the transport is the shared xenstore ring page plus its
//! event channel (see `pv::xenstore_ring` in the binary); in the host tests it
//! is an in-memory daemon. Requests are synchronous (one outstanding at a
//! time); watch events that arrive in between are queued and handed out by
//! [`Client::next_event`].

use crate::xs_wire::{self, Decoder, MsgType, WatchEvent, XsError};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// Moves bytes to and from the daemon.
pub trait Transport {
    /// Writes a whole message, waiting for ring space as needed.
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError>;
    /// Reads reply bytes into `buf`. With `wait`, blocks until at least one
    /// byte arrives (or fails with [`XsError::Timeout`]); without, returns 0
    /// when nothing is available.
    fn recv(&mut self, buf: &mut [u8], wait: bool) -> Result<usize, XsError>;
}

/// Transaction id meaning "no transaction".
pub const NO_TX: u32 = 0;

/// A synchronous xenstore client.
pub struct Client<T: Transport> {
    transport: T,
    decoder: Decoder,
    next_req: u32,
    events: VecDeque<WatchEvent>,
}

impl<T: Transport> Client<T> {
    /// Wraps a transport.
    pub fn new(transport: T) -> Self {
        Client {
            transport,
            decoder: Decoder::default(),
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    /// The underlying transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn absorb(&mut self, wait: bool) -> Result<usize, XsError> {
        let mut buf = [0u8; 512];
        let want = self.decoder.missing().min(buf.len());
        let n = self.transport.recv(&mut buf[..want], wait)?;
        self.decoder.push(&buf[..n]);
        Ok(n)
    }

    fn request(&mut self, ty: MsgType, tx: u32, parts: &[&[u8]]) -> Result<Vec<u8>, XsError> {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let msg = xs_wire::encode_request(ty, id, tx, parts)?;
        self.transport.send(&msg)?;
        loop {
            while let Some((hdr, payload)) = self.decoder.next_message()? {
                if hdr.ty == MsgType::WatchEvent as u32 {
                    self.events.push_back(xs_wire::parse_watch_event(&payload)?);
                } else if hdr.req_id == id {
                    return xs_wire::check_reply(ty, &hdr, payload);
                }
                // else: a late reply to a request that timed out; drop it.
            }
            self.absorb(true)?;
        }
    }

    /// Reads a node.
    pub fn read(&mut self, tx: u32, path: &str) -> Result<String, XsError> {
        let v = self.request(MsgType::Read, tx, &[path.as_bytes(), b"\0"])?;
        String::from_utf8(v).map_err(|_| XsError::Protocol("value is not UTF-8"))
    }

    /// Reads a node, mapping "does not exist" to `None`.
    pub fn read_opt(&mut self, tx: u32, path: &str) -> Result<Option<String>, XsError> {
        match self.read(tx, path) {
            Ok(v) => Ok(Some(v)),
            Err(XsError::NoEntry) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a node (creating it and missing parents).
    pub fn write(&mut self, tx: u32, path: &str, value: &str) -> Result<(), XsError> {
        self.request(
            MsgType::Write,
            tx,
            &[path.as_bytes(), b"\0", value.as_bytes()],
        )
        .map(|_| ())
    }

    /// Creates an empty node.
    pub fn mkdir(&mut self, tx: u32, path: &str) -> Result<(), XsError> {
        self.request(MsgType::Mkdir, tx, &[path.as_bytes(), b"\0"])
            .map(|_| ())
    }

    /// Removes a node and its children; a missing node is not an error.
    pub fn rm(&mut self, tx: u32, path: &str) -> Result<(), XsError> {
        match self.request(MsgType::Rm, tx, &[path.as_bytes(), b"\0"]) {
            Ok(_) | Err(XsError::NoEntry) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Lists the children of a node.
    pub fn directory(&mut self, tx: u32, path: &str) -> Result<Vec<String>, XsError> {
        let v = self.request(MsgType::Directory, tx, &[path.as_bytes(), b"\0"])?;
        Ok(xs_wire::split_strings(&v)?
            .into_iter()
            .map(String::from)
            .collect())
    }

    /// The domain's home path (`/local/domain/<domid>`).
    pub fn domain_path(&mut self, domid: u32) -> Result<String, XsError> {
        let id = alloc::format!("{domid}");
        let v = self.request(MsgType::GetDomainPath, NO_TX, &[id.as_bytes(), b"\0"])?;
        Ok(xs_wire::split_strings(&v)?
            .first()
            .map(|s| String::from(*s))
            .unwrap_or_default())
    }

    /// Watches `path` and everything below it. The daemon fires once right
    /// away; later events come from [`Client::next_event`].
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request(
            MsgType::Watch,
            NO_TX,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        )
        .map(|_| ())
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request(
            MsgType::Unwatch,
            NO_TX,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        )
        .map(|_| ())
    }

    /// Starts a transaction and returns its id.
    pub fn transaction_start(&mut self) -> Result<u32, XsError> {
        let v = self.request(MsgType::TransactionStart, NO_TX, &[b"\0"])?;
        let s = xs_wire::split_strings(&v)?;
        s.first()
            .and_then(|s| s.parse().ok())
            .ok_or(XsError::Protocol("bad transaction id"))
    }

    /// Commits (`commit`) or aborts a transaction. A conflict yields [`XsError::Again`].
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), XsError> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(MsgType::TransactionEnd, tx, &[arg])
            .map(|_| ())
    }

    /// Runs `body` inside a transaction, retrying the whole body up to
    /// `attempts` times while the daemon reports a conflict (EAGAIN).
    pub fn transaction<R>(
        &mut self,
        attempts: u32,
        mut body: impl FnMut(&mut Self, u32) -> Result<R, XsError>,
    ) -> Result<R, XsError> {
        let mut left = attempts.max(1);
        loop {
            left -= 1;
            let tx = self.transaction_start()?;
            let res = body(self, tx);
            let outcome = match res {
                Ok(r) => self.transaction_end(tx, true).map(|_| r),
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    Err(e)
                }
            };
            match outcome {
                Err(XsError::Again) if left > 0 => continue,
                other => return other,
            }
        }
    }

    /// Collects whatever the daemon sent without waiting (watch events;
    /// stray replies are dropped).
    pub fn poll(&mut self) -> Result<(), XsError> {
        loop {
            while let Some((hdr, payload)) = self.decoder.next_message()? {
                if hdr.ty == MsgType::WatchEvent as u32 {
                    self.events.push_back(xs_wire::parse_watch_event(&payload)?);
                }
            }
            if self.absorb(false)? == 0 {
                return Ok(());
            }
        }
    }

    /// The oldest queued watch event.
    pub fn next_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
pub(crate) mod mock {
    //! An in-memory xenstore daemon speaking the wire protocol, for tests.
    use super::*;
    use crate::xs_wire::Header;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct MockStore {
        pub nodes: BTreeMap<String, String>,
        pub watches: Vec<(String, String)>,
        pub out: VecDeque<u8>,
        /// Commits that fail with EAGAIN before one succeeds.
        pub conflicts: u32,
        pub commits: u32,
        /// Paths the guest may not write (EACCES).
        pub read_only: Vec<String>,
        next_tx: u32,
    }

    impl MockStore {
        fn reply(&mut self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
            let h = Header {
                ty,
                req_id,
                tx_id,
                len: payload.len() as u32,
            };
            self.out.extend(h.encode());
            self.out.extend(payload);
        }
        fn error(&mut self, req_id: u32, name: &str) {
            let mut p = name.as_bytes().to_vec();
            p.push(0);
            self.reply(MsgType::Error as u32, req_id, 0, &p);
        }
        fn fire(&mut self, path: &str) {
            let hits: Vec<_> = self
                .watches
                .iter()
                .filter(|(w, _)| path == w || path.starts_with(&format!("{w}/")))
                .cloned()
                .collect();
            for (_, token) in hits {
                let p = format!("{path}\0{token}\0");
                self.reply(MsgType::WatchEvent as u32, 0, 0, p.as_bytes());
            }
        }
        /// A write by "dom0", outside the client.
        pub fn external_write(&mut self, path: &str, value: &str) {
            self.nodes.insert(path.into(), value.into());
            self.fire(path);
        }
        fn handle(&mut self, hdr: Header, payload: &[u8]) {
            let strs = xs_wire::split_strings(payload).unwrap();
            let id = hdr.req_id;
            match MsgType::from_u32(hdr.ty).unwrap() {
                MsgType::Read => match self.nodes.get(strs[0]).cloned() {
                    Some(v) => self.reply(hdr.ty, id, hdr.tx_id, v.as_bytes()),
                    None => self.error(id, "ENOENT"),
                },
                MsgType::Write => {
                    let nul = payload.iter().position(|&b| b == 0).unwrap();
                    let path = std::str::from_utf8(&payload[..nul]).unwrap().to_string();
                    if self.read_only.iter().any(|p| path.starts_with(p.as_str())) {
                        return self.error(id, "EACCES");
                    }
                    let val = std::str::from_utf8(&payload[nul + 1..])
                        .unwrap()
                        .to_string();
                    self.nodes.insert(path.clone(), val);
                    self.reply(hdr.ty, id, hdr.tx_id, b"OK\0");
                    self.fire(&path);
                }
                MsgType::Rm => {
                    let p = strs[0].to_string();
                    let before = self.nodes.len();
                    self.nodes
                        .retain(|k, _| !(k == &p || k.starts_with(&format!("{p}/"))));
                    if self.nodes.len() == before {
                        self.error(id, "ENOENT")
                    } else {
                        self.reply(hdr.ty, id, 0, b"OK\0")
                    }
                }
                MsgType::Directory => {
                    let prefix = format!("{}/", strs[0]);
                    let mut kids: Vec<String> = self
                        .nodes
                        .keys()
                        .filter_map(|k| {
                            k.strip_prefix(&prefix)
                                .map(|r| r.split('/').next().unwrap().to_string())
                        })
                        .collect();
                    kids.dedup();
                    if kids.is_empty() && !self.nodes.contains_key(strs[0]) {
                        return self.error(id, "ENOENT");
                    }
                    let body: String = kids.iter().map(|k| format!("{k}\0")).collect();
                    self.reply(hdr.ty, id, 0, body.as_bytes());
                }
                MsgType::Watch => {
                    self.watches.push((strs[0].into(), strs[1].into()));
                    self.reply(hdr.ty, id, 0, b"OK\0");
                    let p = format!("{}\0{}\0", strs[0], strs[1]);
                    self.reply(MsgType::WatchEvent as u32, 0, 0, p.as_bytes());
                }
                MsgType::TransactionStart => {
                    self.next_tx += 1;
                    let s = format!("{}\0", self.next_tx);
                    self.reply(hdr.ty, id, 0, s.as_bytes());
                }
                MsgType::TransactionEnd => {
                    if strs[0] == "T" && self.conflicts > 0 {
                        self.conflicts -= 1;
                        return self.error(id, "EAGAIN");
                    }
                    if strs[0] == "T" {
                        self.commits += 1;
                    }
                    self.reply(hdr.ty, id, 0, b"OK\0");
                }
                _ => self.error(id, "ENOSYS"),
            }
        }
    }

    impl Transport for MockStore {
        fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
            let hdr = Header::decode(msg[..16].try_into().unwrap());
            assert_eq!(hdr.len as usize, msg.len() - 16);
            self.handle(hdr, &msg[16..]);
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8], wait: bool) -> Result<usize, XsError> {
            if self.out.is_empty() {
                return if wait { Err(XsError::Timeout) } else { Ok(0) };
            }
            // hand out at most 7 bytes at a time to exercise reassembly
            let n = buf.len().min(self.out.len()).min(7);
            for b in buf.iter_mut().take(n) {
                *b = self.out.pop_front().unwrap();
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mock::MockStore;
    use super::*;

    #[test]
    fn read_write_directory_rm() {
        let mut c = Client::new(MockStore::default());
        assert_eq!(c.read(NO_TX, "a/b"), Err(XsError::NoEntry));
        assert_eq!(c.read_opt(NO_TX, "a/b"), Ok(None));
        c.write(NO_TX, "a/b", "1").unwrap();
        c.write(NO_TX, "a/c/d", "two words").unwrap();
        assert_eq!(c.read(NO_TX, "a/c/d").unwrap(), "two words");
        assert_eq!(c.directory(NO_TX, "a").unwrap(), vec!["b", "c"]);
        c.rm(NO_TX, "a/c").unwrap();
        c.rm(NO_TX, "a/c").unwrap(); // missing is fine
        assert_eq!(c.directory(NO_TX, "a").unwrap(), vec!["b"]);
    }

    #[test]
    fn errors_surface_as_rust_errors() {
        let mut store = MockStore::default();
        store.read_only.push("ro".into());
        let mut c = Client::new(store);
        assert_eq!(c.write(NO_TX, "ro/x", "1"), Err(XsError::Access));
        assert_eq!(c.read(NO_TX, "nope"), Err(XsError::NoEntry));
    }

    #[test]
    fn watch_events_are_queued_between_replies() {
        let mut c = Client::new(MockStore::default());
        c.watch("cfg", "tok").unwrap();
        // the initial firing
        c.poll().unwrap();
        assert_eq!(
            c.next_event(),
            Some(WatchEvent {
                path: "cfg".into(),
                token: "tok".into()
            })
        );
        c.transport_mut().external_write("cfg/port", "7");
        c.write(NO_TX, "other", "x").unwrap(); // event arrives before this reply
        assert_eq!(c.next_event().unwrap().path, "cfg/port");
        assert_eq!(c.next_event(), None);
        c.transport_mut().external_write("cfg/ip", "1");
        c.poll().unwrap();
        assert_eq!(c.next_event().unwrap().path, "cfg/ip");
    }

    #[test]
    fn transactions_retry_on_eagain() {
        let mut store = MockStore::default();
        store.conflicts = 2;
        let mut c = Client::new(store);
        let mut runs = 0;
        let r = c.transaction(5, |c, tx| {
            runs += 1;
            c.write(tx, "k", "v")?;
            Ok(42)
        });
        assert_eq!(r, Ok(42));
        assert_eq!(runs, 3);
        assert_eq!(c.transport_mut().commits, 1);
    }

    #[test]
    fn transactions_give_up_after_the_attempt_budget() {
        let mut store = MockStore::default();
        store.conflicts = 10;
        let mut c = Client::new(store);
        assert_eq!(
            c.transaction(3, |c, tx| c.write(tx, "k", "v")),
            Err(XsError::Again)
        );
    }

    #[test]
    fn a_failing_body_aborts_without_retry() {
        let mut c = Client::new(MockStore::default());
        let mut runs = 0;
        let r: Result<(), _> = c.transaction(3, |c, tx| {
            runs += 1;
            c.read(tx, "missing").map(|_| ())
        });
        assert_eq!(r, Err(XsError::NoEntry));
        assert_eq!(runs, 1);
    }
}
