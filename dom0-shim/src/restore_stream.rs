//! Writes what `xl restore` reads: an xl save file, produced from a
//! committed checkpoint (pages plus [`VmState`]) without a temporary file.
//!
//! The file is three nested formats (Xen 4.17, `docs/specs/` and
//! `tools/xl/xl.h`):
//! 1. xl's header: 32-byte magic, byte order, flags (JSON config, stream
//!    v2), then the libxl domain configuration as JSON;
//! 2. the libxl stream: "LibxlFmt" header, a LIBXC_CONTEXT record, ...,
//!    END;
//! 3. inside it, the libxc stream v3: image and domain headers, the CPU
//!    policies, STATIC_DATA_END, PAGE_DATA batches, X86_TSC_INFO,
//!    HVM_CONTEXT, HVM_PARAMS, END — the records and order of Xen's own
//!    saver for an HVM/PVH guest.

use crate::vmstate::VmState;
use anyhow::{ensure, Result};
use std::io::{self, Write};

/// Pages per PAGE_DATA record (libxc's saver batches 1024 too).
pub const BATCH: usize = 1024;

const PAGE: usize = 4096;

const XL_MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
const XL_FLAG_JSON: u32 = 1 << 0;
const XL_FLAG_STREAM_V2: u32 = 1 << 1;

const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74; // "LibxlFmt"
const LIBXL_VERSION: u32 = 2;
const LIBXL_END: u32 = 0;
const LIBXL_LIBXC_CONTEXT: u32 = 1;

const XENF_MARKER: u64 = u64::MAX;
const XENF_ID: u32 = 0x5845_4e46; // "XENF"
const XENF_VERSION: u32 = 3;
const DOMAIN_TYPE_X86_HVM: u32 = 2;

/// libxc record types used here.
mod rec {
    pub const END: u32 = 0x00;
    pub const PAGE_DATA: u32 = 0x01;
    pub const X86_TSC_INFO: u32 = 0x08;
    pub const HVM_CONTEXT: u32 = 0x09;
    pub const HVM_PARAMS: u32 = 0x0a;
    pub const STATIC_DATA_END: u32 = 0x10;
    pub const X86_CPUID_POLICY: u32 = 0x11;
    pub const X86_MSR_POLICY: u32 = 0x12;
}

/// Where the pages come from: the committed image's slots.
pub trait PageSource {
    /// Calls `f` with the page of each slot in `slots`, in that order.
    fn for_each_page(
        &mut self,
        slots: &[u64],
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<()>;
}

/// An image held in memory (tests, and images read back over the wire).
impl PageSource for &[u8] {
    fn for_each_page(
        &mut self,
        slots: &[u64],
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<()> {
        for &s in slots {
            let at = s as usize * PAGE;
            let page = self
                .get(at..at + PAGE)
                .ok_or_else(|| anyhow::anyhow!("slot {s} is outside the image"))?;
            f(page)?;
        }
        Ok(())
    }
}

/// The order pages go out in: with `hot_first`, the slots the guest wrote
/// in its last epochs (most recent first), then the rest by frame;
/// otherwise simply by frame.
pub fn restore_order(state: &VmState, hot_first: bool) -> Vec<u64> {
    let n = state.layout.len();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    if hot_first {
        for &s in &state.hot_slots {
            let s = s as usize;
            if s < n && !placed[s] {
                placed[s] = true;
                order.push(s as u64);
            }
        }
    }
    order.extend((0..n).filter(|&s| !placed[s]).map(|s| s as u64));
    order
}

/// Writes the whole save file for `state` with the pages of `order` (slots
/// of the image; every slot exactly once) from `pages`. Returns the bytes
/// written.
pub fn write_save_file(
    out: &mut dyn Write,
    state: &VmState,
    xen_version: (u32, u32),
    order: &[u64],
    pages: &mut dyn PageSource,
) -> Result<u64> {
    ensure!(
        order.len() == state.layout.len(),
        "{} pages ordered for a layout of {}",
        order.len(),
        state.layout.len()
    );
    let mut w = Counting { out, n: 0 };

    // xl header and config (its integers in the host's byte order).
    let mut config = state.config_json.as_bytes().to_vec();
    config.push(0);
    w.write_all(XL_MAGIC)?;
    w.write_all(&0x0102_0304u32.to_ne_bytes())?;
    w.write_all(&(XL_FLAG_JSON | XL_FLAG_STREAM_V2).to_ne_bytes())?;
    w.write_all(&0u32.to_ne_bytes())?;
    w.write_all(&(4 + config.len() as u32).to_ne_bytes())?;
    w.write_all(&(config.len() as u32).to_ne_bytes())?;
    w.write_all(&config)?;

    // libxl stream header (big-endian), then hand over to libxc.
    w.write_all(&LIBXL_IDENT.to_be_bytes())?;
    w.write_all(&LIBXL_VERSION.to_be_bytes())?;
    w.write_all(&0u32.to_be_bytes())?;
    record(&mut w, LIBXL_LIBXC_CONTEXT, &[])?;

    // libxc image header (big-endian) and domain header.
    w.write_all(&XENF_MARKER.to_be_bytes())?;
    w.write_all(&XENF_ID.to_be_bytes())?;
    w.write_all(&XENF_VERSION.to_be_bytes())?;
    w.write_all(&[0u8; 8])?; // options (little-endian stream) and reserved
    w.write_all(&DOMAIN_TYPE_X86_HVM.to_le_bytes())?;
    w.write_all(&12u16.to_le_bytes())?;
    w.write_all(&0u16.to_le_bytes())?;
    w.write_all(&xen_version.0.to_le_bytes())?;
    w.write_all(&xen_version.1.to_le_bytes())?;

    if !state.cpu.cpuid.is_empty() {
        record(&mut w, rec::X86_CPUID_POLICY, &state.cpu.cpuid)?;
    }
    if !state.cpu.msrs.is_empty() {
        record(&mut w, rec::X86_MSR_POLICY, &state.cpu.msrs)?;
    }
    record(&mut w, rec::STATIC_DATA_END, &[])?;

    for batch in order.chunks(BATCH) {
        let len = 8 + batch.len() * (8 + PAGE);
        w.write_all(&rec::PAGE_DATA.to_le_bytes())?;
        w.write_all(&(len as u32).to_le_bytes())?;
        w.write_all(&(batch.len() as u32).to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        for &slot in batch {
            // Type bits 63-60 zero: XEN_DOMCTL_PFINFO_NOTAB, a normal page.
            let pfn = *state
                .layout
                .get(slot as usize)
                .ok_or_else(|| anyhow::anyhow!("slot {slot} has no frame"))?;
            w.write_all(&pfn.to_le_bytes())?;
        }
        pages.for_each_page(batch, &mut |p| w.write_all(p))?;
    }

    record(&mut w, rec::X86_TSC_INFO, &state.tsc.to_record())?;
    record(&mut w, rec::HVM_CONTEXT, &state.hvm_context)?;
    if !state.hvm_params.is_empty() {
        let mut params = Vec::with_capacity(8 + 16 * state.hvm_params.len());
        params.extend_from_slice(&(state.hvm_params.len() as u32).to_le_bytes());
        params.extend_from_slice(&0u32.to_le_bytes());
        for (i, v) in &state.hvm_params {
            params.extend_from_slice(&i.to_le_bytes());
            params.extend_from_slice(&v.to_le_bytes());
        }
        record(&mut w, rec::HVM_PARAMS, &params)?;
    }
    record(&mut w, rec::END, &[])?;
    record(&mut w, LIBXL_END, &[])?;
    w.flush()?;
    Ok(w.n)
}

/// A record of either stream: type, length, body, zero padding to 8.
fn record(w: &mut dyn Write, kind: u32, body: &[u8]) -> io::Result<()> {
    w.write_all(&kind.to_le_bytes())?;
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(body)?;
    w.write_all(&[0u8; 8][..body.len().next_multiple_of(8) - body.len()])
}

struct Counting<'a> {
    out: &'a mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let k = self.out.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    //! The writer against an independent reader of the three formats,
    //! written from the specs.
    use super::*;
    use crate::xen::{CpuPolicy, TscInfo};
    use std::collections::BTreeMap;

    struct Parsed {
        config: String,
        libxc: Vec<(u32, Vec<u8>)>,
        pages: BTreeMap<u64, Vec<u8>>,
        page_order: Vec<u64>,
    }

    fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (h, t) = b.split_at(n);
        *b = t;
        h
    }
    fn le32(b: &[u8]) -> u32 {
        u32::from_le_bytes(b[..4].try_into().unwrap())
    }
    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }

    fn parse(mut b: &[u8]) -> Parsed {
        assert_eq!(take(&mut b, 32), XL_MAGIC);
        assert_eq!(le32(take(&mut b, 4)), 0x0102_0304);
        assert_eq!(le32(take(&mut b, 4)), 3, "JSON + stream v2");
        assert_eq!(le32(take(&mut b, 4)), 0);
        let opt = le32(take(&mut b, 4)) as usize;
        let mut o = take(&mut b, opt);
        let clen = le32(take(&mut o, 4)) as usize;
        let config = take(&mut o, clen);
        assert_eq!(config.last(), Some(&0));
        let config = String::from_utf8(config[..clen - 1].to_vec()).unwrap();
        assert_eq!(
            u64::from_be_bytes(take(&mut b, 8).try_into().unwrap()),
            LIBXL_IDENT
        );
        assert_eq!(be32(take(&mut b, 4)), 2);
        assert_eq!(be32(take(&mut b, 4)), 0);
        assert_eq!(
            (le32(take(&mut b, 4)), le32(take(&mut b, 4))),
            (LIBXL_LIBXC_CONTEXT, 0)
        );
        assert_eq!(take(&mut b, 8), [0xff; 8]);
        assert_eq!(take(&mut b, 4), b"XENF");
        assert_eq!(be32(take(&mut b, 4)), 3);
        assert_eq!(take(&mut b, 8), [0; 8]);
        let dh = take(&mut b, 16);
        assert_eq!((le32(dh), dh[4], dh[5]), (2, 12, 0));
        let mut libxc = Vec::new();
        let mut pages = BTreeMap::new();
        let mut page_order = Vec::new();
        loop {
            let kind = le32(take(&mut b, 4));
            let len = le32(take(&mut b, 4)) as usize;
            let body = take(&mut b, len.next_multiple_of(8))[..len].to_vec();
            if kind == rec::PAGE_DATA {
                let mut p = &body[..];
                let count = le32(take(&mut p, 4)) as usize;
                take(&mut p, 4);
                let pfns: Vec<u64> = (0..count)
                    .map(|_| u64::from_le_bytes(take(&mut p, 8).try_into().unwrap()))
                    .collect();
                for pfn in pfns {
                    assert_eq!(pfn >> 60, 0, "normal pages only");
                    assert!(
                        pages.insert(pfn, take(&mut p, PAGE).to_vec()).is_none(),
                        "frame {pfn:#x} twice"
                    );
                    page_order.push(pfn);
                }
                assert!(p.is_empty());
            }
            libxc.push((kind, body));
            if kind == rec::END {
                break;
            }
        }
        assert_eq!(
            (le32(take(&mut b, 4)), le32(take(&mut b, 4))),
            (LIBXL_END, 0)
        );
        assert!(b.is_empty(), "{} trailing bytes", b.len());
        Parsed {
            config,
            libxc,
            pages,
            page_order,
        }
    }

    fn state(n: usize) -> VmState {
        VmState {
            epoch: 9,
            interval_ms: 100,
            vcpus: 1,
            layout: (0..n as u64 / 2)
                .chain(0x1000..0x1000 + (n - n / 2) as u64)
                .collect(),
            hvm_context: vec![0xab; 1234],
            hvm_params: vec![(1, 0xfeffc), (17, 0xfeffd)],
            tsc: TscInfo {
                mode: 1,
                khz: 3_000_000,
                nsec: 77,
                incarnation: 2,
            },
            cpu: CpuPolicy {
                cpuid: vec![3; 24 * 5],
                msrs: vec![4; 16 * 2],
            },
            config_json: r#"{"c_info":{"name":"vm"}}"#.into(),
            hot_slots: vec![2500, 7, 2500, 99_999],
        }
    }

    #[test]
    fn the_save_file_carries_every_page_and_record_in_xens_order() {
        let n = 2600;
        let s = state(n);
        let image: Vec<u8> = (0..n * PAGE)
            .map(|i| (i / PAGE * 7 + i % 251) as u8)
            .collect();
        let order = restore_order(&s, true);
        let mut out = Vec::new();
        let written = write_save_file(&mut out, &s, (4, 17), &order, &mut &image[..]).unwrap();
        assert_eq!(written as usize, out.len());
        let p = parse(&out);
        assert_eq!(p.config, s.config_json);
        let kinds: Vec<u32> = p
            .libxc
            .iter()
            .map(|r| r.0)
            .filter(|&k| k != rec::PAGE_DATA)
            .collect();
        assert_eq!(
            kinds,
            [
                rec::X86_CPUID_POLICY,
                rec::X86_MSR_POLICY,
                rec::STATIC_DATA_END,
                rec::X86_TSC_INFO,
                rec::HVM_CONTEXT,
                rec::HVM_PARAMS,
                rec::END
            ]
        );
        assert_eq!(
            p.libxc.iter().filter(|r| r.0 == rec::PAGE_DATA).count(),
            n.div_ceil(BATCH)
        );
        assert_eq!(p.pages.len(), n);
        for (slot, pfn) in s.layout.iter().enumerate() {
            assert_eq!(
                p.pages[pfn],
                image[slot * PAGE..(slot + 1) * PAGE],
                "frame {pfn:#x}"
            );
        }
        let ctx = p.libxc.iter().find(|r| r.0 == rec::HVM_CONTEXT).unwrap();
        assert_eq!(ctx.1, s.hvm_context);
        let params = &p.libxc.iter().find(|r| r.0 == rec::HVM_PARAMS).unwrap().1;
        assert_eq!(le32(params), 2);
        assert_eq!(
            u64::from_le_bytes(params[16..24].try_into().unwrap()),
            0xfeffc
        );
        // Hot pages first (slot 2500 once, then 7; the out-of-range one dropped).
        assert_eq!(
            &p.page_order[..3],
            &[s.layout[2500], s.layout[7], s.layout[0]]
        );
    }

    #[test]
    fn frame_order_without_the_hot_set() {
        let s = state(10);
        assert_eq!(restore_order(&s, false), (0..10).collect::<Vec<u64>>());
        let hot = restore_order(&s, true);
        assert_eq!(hot[0], 7);
        let mut sorted = hot.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<u64>>());
    }

    #[test]
    fn a_short_order_or_image_is_an_error() {
        let s = state(10);
        let image = vec![0u8; 5 * PAGE];
        let mut out = Vec::new();
        assert!(write_save_file(&mut out, &s, (4, 17), &[0, 1], &mut &image[..]).is_err());
        let order = restore_order(&s, false);
        assert!(write_save_file(&mut out, &s, (4, 17), &order, &mut &image[..]).is_err());
    }
}
