//! Output commit: the protected guest's outgoing packets of an epoch are held
//! in dom0 and released only when the backup has acknowledged that epoch, so
//! nobody outside ever sees a reply from a state the backup could not
//! resume from (Remus's network buffering, done here without libxl).
//!
//! Mechanism: the kernel's `sch_plug` qdisc on an `ifb` device.
//!
//! ```text
//!  guest ──netfront──▶ vif<domid>.0 ──ingress qdisc, matchall──▶ mirred redirect
//!                                                                     │
//!        xenbr0 ◀── re-injected as vif ingress ◀── ifb egress: sch_plug ◀┘
//! ```
//!
//! What the guest sends enters dom0 as *ingress* traffic of its vif. A
//! qdisc only shapes egress, so an ingress filter (matchall, every protocol,
//! ARP included) redirects those packets to the egress of an ifb device,
//! whose root qdisc is `plug`; when plug lets a packet go, ifb hands it back
//! to the vif's receive path and the bridge forwards it as usual.
//!
//! `sch_plug` keeps a FIFO with barriers:
//! - BUFFER: inserts a barrier; what was queued before it is "the last
//!   epoch", what comes after is the next one (and from the unplugged state,
//!   it starts holding);
//! - RELEASE_ONE: lets the packets before the oldest barrier go;
//! - RELEASE_INDEFINITE: lets everything go and stops holding.
//!
//! protect puts a barrier while the guest sits at its suspend point (every
//! packet before it was produced by the state being captured, none after
//! it), and releases one epoch when that epoch's ACK arrives. Epochs are
//! acknowledged one at a time (the next checkpoint waits for the previous
//! ACK), which is what plug's single "last epoch" counter supports. When the
//! backup is lost, or protect stops, the plug is released for good: an
//! unprotected guest must not stay mute.
//!
//! Why rtnetlink from Rust rather than `tc`: the barrier is taken inside the
//! guest's pause and the release sits on the reply path of every packet, so
//! a fork+exec of `tc` per epoch (milliseconds in dom0, more under TCG)
//! would add straight to the pause and to the latency the guest's clients
//! see. A netlink request on an open socket is one sendmsg and one recv.
//! Only the two messages needed per epoch (and the plug qdisc's creation)
//! are hand-written below; the one-time plumbing around them (the ifb
//! device, the ingress qdisc and its redirect filter) is done with `ip` and
//! `tc` at setup and teardown, off the hot path, where readable commands
//! are worth more than microseconds.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Bytes sch_plug may hold before it drops (its default is the ifb's
/// txqueuelen × MTU, about 48 KB: one busy epoch would overflow it).
pub const DEFAULT_LIMIT: u32 = 16 << 20;

/// The plug qdisc's handle (1:0).
const PLUG_HANDLE: u32 = 0x0001_0000;

/// The three plug operations (linux/pkt_sched.h, TCQ_PLUG_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum PlugAction {
    /// Insert a barrier (start holding).
    Buffer = 0,
    /// Release the packets before the oldest barrier.
    ReleaseOne = 1,
    /// Release everything and stop holding.
    ReleaseIndefinite = 2,
}

/// Output commit for one guest vif.
pub struct OutputCommit {
    vif: String,
    ifb: String,
    nl: rtnl::Socket,
    ifb_index: i32,
    /// Whether a barrier is outstanding (taken, not yet released).
    pending: bool,
    /// Whether the plug currently holds (false after release indefinite).
    holding: bool,
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ifindex(dev: &str) -> Result<i32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
        .with_context(|| format!("network device {dev} not found"))?;
    Ok(s.trim().parse()?)
}

/// The vif of a guest's first network interface.
pub fn vif_of(domid: u32) -> String {
    format!("vif{domid}.0")
}

/// The ifb device output commit uses for a guest (≤ 15 characters).
pub fn ifb_of(domid: u32) -> String {
    format!("rslifb{domid}")
}

impl OutputCommit {
    /// Plumbs the guest's vif through a plug qdisc, unplugged (packets pass
    /// as before) until the first [`OutputCommit::buffer`]. Leftovers of an
    /// earlier run for the same domain (a killed protect) are removed first.
    pub fn setup(domid: u32, limit: u32) -> Result<Self> {
        let vif = vif_of(domid);
        let ifb = ifb_of(domid);
        ifindex(&vif).context("output commit needs the guest's first vif")?;
        teardown_plumbing(&vif, &ifb);
        run("ip", &["link", "add", "name", &ifb, "type", "ifb"])
            .context("creating the ifb device (module ifb)")?;
        let r = (|| {
            run("ip", &["link", "set", "dev", &ifb, "up"])?;
            let ifb_index = ifindex(&ifb)?;
            let nl = rtnl::Socket::open()?;
            nl.plug_create(ifb_index, PLUG_HANDLE, limit)
                .context("creating the plug qdisc (module sch_plug)")?;
            nl.plug(ifb_index, PLUG_HANDLE, PlugAction::ReleaseIndefinite)?;
            run(
                "tc",
                &["qdisc", "add", "dev", &vif, "handle", "ffff:", "ingress"],
            )
            .context("ingress qdisc on the vif (module sch_ingress)")?;
            run(
                "tc",
                &[
                    "filter", "add", "dev", &vif, "parent", "ffff:", "protocol", "all", "prio",
                    "10", "matchall", "action", "mirred", "egress", "redirect", "dev", &ifb,
                ],
            )
            .context(
                "redirecting the vif's traffic to the ifb (modules cls_matchall, act_mirred)",
            )?;
            Ok((nl, ifb_index))
        })();
        match r {
            Ok((nl, ifb_index)) => Ok(OutputCommit {
                vif,
                ifb,
                nl,
                ifb_index,
                pending: false,
                holding: false,
            }),
            Err(e) => {
                teardown_plumbing(&vif, &ifb);
                Err(e)
            }
        }
    }

    /// The devices, for messages.
    pub fn describe(&self) -> String {
        format!("{} -> {} (sch_plug)", self.vif, self.ifb)
    }

    /// Inserts the epoch's barrier. Called at the guest's suspend point:
    /// everything queued so far belongs to the epoch being captured.
    pub fn buffer(&mut self) -> Result<()> {
        self.nl
            .plug(self.ifb_index, PLUG_HANDLE, PlugAction::Buffer)
            .context("plug barrier")?;
        self.pending = true;
        self.holding = true;
        Ok(())
    }

    /// The epoch of the last barrier is acknowledged: its packets go.
    pub fn release_one(&mut self) -> Result<()> {
        if self.pending {
            self.nl
                .plug(self.ifb_index, PLUG_HANDLE, PlugAction::ReleaseOne)
                .context("plug release")?;
            self.pending = false;
        }
        Ok(())
    }

    /// Lets everything go and stops holding (backup lost, or stopping).
    pub fn release_all(&mut self) -> Result<()> {
        if self.holding {
            self.nl
                .plug(self.ifb_index, PLUG_HANDLE, PlugAction::ReleaseIndefinite)
                .context("plug release indefinite")?;
            self.holding = false;
            self.pending = false;
        }
        Ok(())
    }
}

impl Drop for OutputCommit {
    /// Releases what is held, then removes the redirect and the ifb.
    fn drop(&mut self) {
        let _ = self
            .nl
            .plug(self.ifb_index, PLUG_HANDLE, PlugAction::ReleaseIndefinite);
        // The released packets leave the ifb at once; a moment lets the
        // queue drain before the device (and anything still in it) goes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        teardown_plumbing(&self.vif, &self.ifb);
    }
}

/// Removes the ingress redirect and the ifb, ignoring what is not there.
fn teardown_plumbing(vif: &str, ifb: &str) {
    let _ = run("tc", &["qdisc", "del", "dev", vif, "ingress"]);
    if std::path::Path::new(&format!("/sys/class/net/{ifb}")).exists() {
        let _ = run("ip", &["link", "del", "dev", ifb]);
    }
}

/// Just enough rtnetlink for the plug qdisc: RTM_NEWQDISC requests with a
/// `tcmsg`, TCA_KIND "plug" and TCA_OPTIONS `struct tc_plug_qopt`, each
/// acknowledged by the kernel (NLM_F_ACK) so errors are seen at once.
mod rtnl {
    use super::PlugAction;
    use anyhow::{bail, Result};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicU32, Ordering};

    const NETLINK_ROUTE: i32 = 0;
    const RTM_NEWQDISC: u16 = 36;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const TCA_KIND: u16 = 1;
    const TCA_OPTIONS: u16 = 2;
    const TC_H_ROOT: u32 = 0xFFFF_FFFF;
    const AF_UNSPEC: u8 = 0;

    static SEQ: AtomicU32 = AtomicU32::new(1);

    /// An rtnetlink socket.
    pub struct Socket {
        fd: OwnedFd,
    }

    fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(payload);
        while !buf.len().is_multiple_of(4) {
            buf.push(0);
        }
    }

    /// One RTM_NEWQDISC message for the plug qdisc at the root of `ifindex`.
    pub(super) fn plug_message(
        seq: u32,
        flags: u16,
        ifindex: i32,
        handle: u32,
        action: i32,
        limit: u32,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(64);
        // struct nlmsghdr { len, type, flags, seq, pid }; len patched below.
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&RTM_NEWQDISC.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // struct tcmsg { family, pad1, pad2, ifindex, handle, parent, info }
        m.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]);
        m.extend_from_slice(&ifindex.to_ne_bytes());
        m.extend_from_slice(&handle.to_ne_bytes());
        m.extend_from_slice(&TC_H_ROOT.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        put_attr(&mut m, TCA_KIND, b"plug\0");
        // struct tc_plug_qopt { int action; __u32 limit; }
        let mut opt = Vec::with_capacity(8);
        opt.extend_from_slice(&action.to_ne_bytes());
        opt.extend_from_slice(&limit.to_ne_bytes());
        put_attr(&mut m, TCA_OPTIONS, &opt);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    /// The errno of an NLMSG_ERROR answering `seq` (0 = ACK), if `buf`
    /// holds one.
    pub(super) fn ack_of(buf: &[u8], seq: u32) -> Option<i32> {
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
            let s = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?);
            if len < 16 || off + len > buf.len() {
                return None;
            }
            if kind == NLMSG_ERROR && s == seq && len >= 20 {
                return Some(i32::from_ne_bytes(buf[off + 16..off + 20].try_into().ok()?));
            }
            off += (len + 3) & !3;
        }
        None
    }

    impl Socket {
        pub fn open() -> Result<Self> {
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                bail!("netlink socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: valid option pointer and length. A kernel that does
            // not answer within 2 s is an error, not a hang of protect.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            Ok(Socket { fd })
        }

        fn request(&self, msg: &[u8], seq: u32) -> Result<()> {
            // SAFETY: msg is a valid buffer; the kernel is the destination
            // (an unbound netlink socket sends to pid 0).
            let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            if n < 0 {
                bail!("netlink send: {}", std::io::Error::last_os_error());
            }
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: buf is writable for its length.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    bail!("netlink recv: {e}");
                }
                match ack_of(&buf[..n as usize], seq) {
                    Some(0) => return Ok(()),
                    Some(err) => bail!("{}", std::io::Error::from_raw_os_error(-err)),
                    None => continue,
                }
            }
        }

        /// Creates the plug qdisc as the root of `ifindex` (it starts holding).
        pub fn plug_create(&self, ifindex: i32, handle: u32, limit: u32) -> Result<()> {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            self.request(
                &plug_message(seq, NLM_F_CREATE | NLM_F_EXCL, ifindex, handle, 0, limit),
                seq,
            )
        }

        /// One plug operation on the existing qdisc.
        pub fn plug(&self, ifindex: i32, handle: u32, action: PlugAction) -> Result<()> {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            self.request(
                &plug_message(seq, 0, ifindex, handle, action as i32, 0),
                seq,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rtnl::{ack_of, plug_message};

    #[test]
    fn plug_message_layout() {
        let m = plug_message(7, 0, 12, 0x1_0000, 1, 0);
        // nlmsghdr 16 + tcmsg 20 + TCA_KIND (4+5, padded 12) + TCA_OPTIONS (4+8)
        assert_eq!(m.len(), 16 + 20 + 12 + 12);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 12);
        assert_eq!(u32::from_ne_bytes(m[24..28].try_into().unwrap()), 0x1_0000);
        assert_eq!(
            u32::from_ne_bytes(m[28..32].try_into().unwrap()),
            0xFFFF_FFFF
        );
        assert_eq!(&m[36..40], &[9, 0, 1, 0]);
        assert_eq!(&m[40..45], b"plug\0");
        assert_eq!(&m[48..52], &[12, 0, 2, 0]);
        assert_eq!(i32::from_ne_bytes(m[52..56].try_into().unwrap()), 1);
    }

    #[test]
    fn acks_are_matched_by_sequence() {
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&2u16.to_ne_bytes());
        err.extend_from_slice(&0u16.to_ne_bytes());
        err.extend_from_slice(&5u32.to_ne_bytes());
        err.extend_from_slice(&0u32.to_ne_bytes());
        err.extend_from_slice(&(-22i32).to_ne_bytes());
        err.extend_from_slice(&[0u8; 16]);
        assert_eq!(ack_of(&err, 5), Some(-22));
        assert_eq!(ack_of(&err, 6), None);
        assert_eq!(ack_of(&err[..10], 5), None);
    }
}
