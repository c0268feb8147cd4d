//! What a restore needs besides memory, kept in the last pages of a
//! protected VM's checkpoint image: the *state trailer*.
//!
//! The primary writes it at every suspend point; it travels and commits with
//! the memory of the same epoch (the store makes an epoch visible all at
//! once), so the backup never pairs the registers of one epoch with the
//! memory of another. The backup's dom0 reads it back out of the appliance
//! and turns it, with the pages, into a stream `xl restore` takes.
//!
//! Layout (all integers little-endian), padded with zeroes to
//! [`TRAILER_PAGES`] pages:
//!
//! ```text
//! magic "RSLRVMST" | version u32 | body_len u32 | SHA-256(body) [32]
//! body: records, each  kind u32 | len u32 | data [len] | zero pad to 8
//! ```
//!
//! Kinds ([`Kind`]) with bit 31 set are optional and skipped when unknown;
//! an unknown mandatory kind refuses the trailer, as does a wrong checksum.

use crate::xen::{CpuPolicy, TscInfo};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

/// Pages at the end of the image that hold the trailer (256 KiB: the CPU
/// policy, the HVM context of a few dozen vCPUs, the domain config and the
/// hot set fit with room to spare; unused pages are zero and cost nothing on
/// the wire or in the store).
pub const TRAILER_PAGES: usize = 64;

/// Most slots kept in the hot set.
pub const MAX_HOT: usize = 16 * 1024;

const MAGIC: &[u8; 8] = b"RSLRVMST";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 32;
const PAGE: usize = 4096;

/// Record kinds of the trailer body.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// epoch u64, interval_ms u32, vcpus u32.
    Meta = 1,
    /// The guest frame of each image slot, as runs: (first pfn u64, count u64).
    Layout = 2,
    /// The HVM context blob at the suspend point.
    HvmContext = 3,
    /// HVM params: (index u64, value u64) pairs, non-zero values only.
    HvmParams = 4,
    /// mode u32, khz u32, nsec u64, incarnation u32, reserved u32.
    Tsc = 5,
    /// `xen_cpuid_leaf_t[]`.
    CpuidPolicy = 6,
    /// `xen_msr_entry_t[]`.
    MsrPolicy = 7,
    /// The libxl domain configuration as JSON (domid cleared).
    ConfigJson = 8,
    /// Slots written in the last few epochs, most recent first (u32 each):
    /// the predicted working set, restored first. Optional.
    HotSlots = 0x8000_0001,
}

/// A protected VM's restore state at one suspend point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmState {
    /// The primary's checkpoint count when this was captured.
    pub epoch: u64,
    /// The checkpoint interval, so the backup can tell a silent primary.
    pub interval_ms: u32,
    /// vCPUs of the domain.
    pub vcpus: u32,
    /// Guest frame of each slot of the dense image, ascending.
    pub layout: Vec<u64>,
    /// HVM context (XEN_DOMCTL_gethvmcontext).
    pub hvm_context: Vec<u8>,
    /// Non-zero HVM params a restore sets, (index, value).
    pub hvm_params: Vec<(u64, u64)>,
    /// TSC settings.
    pub tsc: TscInfo,
    /// CPUID and MSR policies.
    pub cpu: CpuPolicy,
    /// libxl's JSON domain configuration.
    pub config_json: String,
    /// Recently written slots, most recent first (at most [`MAX_HOT`]).
    pub hot_slots: Vec<u32>,
}

/// Bytes the trailer occupies in the image.
pub const fn trailer_bytes() -> usize {
    TRAILER_PAGES * PAGE
}

impl VmState {
    /// Serialises into a buffer of exactly [`trailer_bytes`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut body = Vec::with_capacity(16 * 1024);
        let mut meta = Vec::with_capacity(16);
        meta.extend_from_slice(&self.epoch.to_le_bytes());
        meta.extend_from_slice(&self.interval_ms.to_le_bytes());
        meta.extend_from_slice(&self.vcpus.to_le_bytes());
        record(&mut body, Kind::Meta, &meta);
        let mut runs = Vec::new();
        for (first, count) in runs_of(&self.layout) {
            runs.extend_from_slice(&first.to_le_bytes());
            runs.extend_from_slice(&count.to_le_bytes());
        }
        record(&mut body, Kind::Layout, &runs);
        record(&mut body, Kind::HvmContext, &self.hvm_context);
        let params: Vec<u8> = self
            .hvm_params
            .iter()
            .flat_map(|(i, v)| i.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect();
        record(&mut body, Kind::HvmParams, &params);
        record(&mut body, Kind::Tsc, &self.tsc.to_record());
        record(&mut body, Kind::CpuidPolicy, &self.cpu.cpuid);
        record(&mut body, Kind::MsrPolicy, &self.cpu.msrs);
        record(&mut body, Kind::ConfigJson, self.config_json.as_bytes());
        let hot: Vec<u8> = self
            .hot_slots
            .iter()
            .take(MAX_HOT)
            .flat_map(|s| s.to_le_bytes())
            .collect();
        record(&mut body, Kind::HotSlots, &hot);

        let mut out = Vec::with_capacity(trailer_bytes());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        ensure!(
            out.len() <= trailer_bytes(),
            "the VM's restore state needs {} bytes, more than the {} of the trailer",
            out.len(),
            trailer_bytes()
        );
        out.resize(trailer_bytes(), 0);
        Ok(out)
    }

    /// Parses a trailer; refuses anything that is not a complete, intact
    /// trailer of a version this shim knows.
    pub fn decode(bytes: &[u8]) -> Result<VmState> {
        ensure!(
            bytes.len() >= HEADER,
            "state trailer too short ({} bytes)",
            bytes.len()
        );
        if &bytes[..8] != MAGIC {
            bail!("no restore state in the image (the primary never reached its first checkpoint, or is too old)");
        }
        let version = u32_at(bytes, 8);
        ensure!(
            version == VERSION,
            "restore state version {version}, this shim reads {VERSION}"
        );
        let len = u32_at(bytes, 12) as usize;
        let body = bytes
            .get(HEADER..HEADER + len)
            .context("restore state longer than its trailer")?;
        ensure!(
            Sha256::digest(body).as_slice() == &bytes[16..48],
            "restore state checksum mismatch"
        );

        let mut s = VmState::default();
        let mut seen_meta = false;
        let mut at = 0;
        while at < body.len() {
            ensure!(body.len() - at >= 8, "truncated record header at {at}");
            let kind = u32_at(body, at);
            let n = u32_at(body, at + 4) as usize;
            let data = body
                .get(at + 8..at + 8 + n)
                .with_context(|| format!("record {kind:#x} overruns the body"))?;
            at += 8 + n.next_multiple_of(8);
            match kind {
                k if k == Kind::Meta as u32 => {
                    ensure!(n == 16, "meta record of {n} bytes");
                    s.epoch = u64_at(data, 0);
                    s.interval_ms = u32_at(data, 8);
                    s.vcpus = u32_at(data, 12);
                    seen_meta = true;
                }
                k if k == Kind::Layout as u32 => {
                    ensure!(n.is_multiple_of(16), "layout record of {n} bytes");
                    for run in data.chunks_exact(16) {
                        let (first, count) = (u64_at(run, 0), u64_at(run, 8));
                        ensure!(count <= 1 << 40, "layout run of {count} frames");
                        s.layout.extend(
                            first..first.checked_add(count).context("layout run overflows")?,
                        );
                    }
                }
                k if k == Kind::HvmContext as u32 => s.hvm_context = data.to_vec(),
                k if k == Kind::HvmParams as u32 => {
                    ensure!(n.is_multiple_of(16), "params record of {n} bytes");
                    s.hvm_params = data
                        .chunks_exact(16)
                        .map(|p| (u64_at(p, 0), u64_at(p, 8)))
                        .collect();
                }
                k if k == Kind::Tsc as u32 => {
                    let rec: &[u8; 24] = data
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("TSC record of {n} bytes"))?;
                    s.tsc = TscInfo::from_record(rec);
                }
                k if k == Kind::CpuidPolicy as u32 => s.cpu.cpuid = data.to_vec(),
                k if k == Kind::MsrPolicy as u32 => s.cpu.msrs = data.to_vec(),
                k if k == Kind::ConfigJson as u32 => {
                    s.config_json =
                        String::from_utf8(data.to_vec()).context("domain config is not UTF-8")?
                }
                k if k == Kind::HotSlots as u32 => {
                    s.hot_slots = data.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
                }
                k if k & 0x8000_0000 != 0 => {}
                k => bail!("restore state has unknown mandatory record {k:#x}"),
            }
        }
        ensure!(seen_meta, "restore state has no meta record");
        ensure!(!s.layout.is_empty(), "restore state has no memory layout");
        ensure!(
            !s.hvm_context.is_empty(),
            "restore state has no HVM context"
        );
        ensure!(
            !s.config_json.is_empty(),
            "restore state has no domain configuration"
        );
        Ok(s)
    }
}

fn record(out: &mut Vec<u8>, kind: Kind, data: &[u8]) {
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// Runs of consecutive frames: (first, count).
fn runs_of(pfns: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in pfns {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == p => *count += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The domain's libxl configuration as JSON, as `xl save` would store it:
/// the `config` object of `xl list -l`, with `c_info.domid` cleared so the
/// restore picks a fresh domain id.
pub fn domain_config_json(domid: u32) -> Result<String> {
    let out = std::process::Command::new("xl")
        .args(["list", "-l", &domid.to_string()])
        .output()
        .context("running xl list -l")?;
    ensure!(
        out.status.success(),
        "xl list -l {domid}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    config_from_xl_list(&out.stdout)
}

/// Extracts the configuration from `xl list -l` output (see
/// [`domain_config_json`]).
pub fn config_from_xl_list(json: &[u8]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).context("xl list -l printed no JSON")?;
    let mut config = v
        .as_array()
        .and_then(|a| a.first())
        .and_then(|d| d.get("config"))
        .cloned()
        .context("xl list -l printed no domain config")?;
    if let Some(c_info) = config.get_mut("c_info").and_then(|c| c.as_object_mut()) {
        c_info.remove("domid");
    }
    Ok(serde_json::to_string(&config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmState {
        VmState {
            epoch: 42,
            interval_ms: 200,
            vcpus: 1,
            layout: (0..0xa0)
                .chain(0x100..0x8000)
                .chain([0xfeff0, 0xfeff1])
                .collect(),
            hvm_context: vec![7; 3000],
            hvm_params: vec![(1, 0xfeffc), (17, 0xfeffd)],
            tsc: TscInfo {
                mode: 0,
                khz: 2_000_000,
                nsec: 123_456_789,
                incarnation: 3,
            },
            cpu: CpuPolicy {
                cpuid: vec![1; 24 * 60],
                msrs: vec![2; 16 * 3],
            },
            config_json: r#"{"c_info":{"name":"vm"}}"#.into(),
            hot_slots: vec![5, 9, 1],
        }
    }

    #[test]
    fn a_trailer_round_trips_and_fills_its_pages_exactly() {
        let s = sample();
        let t = s.encode().unwrap();
        assert_eq!(t.len(), trailer_bytes());
        assert_eq!(VmState::decode(&t).unwrap(), s);
    }

    #[test]
    fn damage_anywhere_in_the_body_is_refused() {
        let t = sample().encode().unwrap();
        let body_len = u32_at(&t, 12) as usize;
        for at in [HEADER, HEADER + 100, HEADER + body_len - 1] {
            let mut bad = t.clone();
            bad[at] ^= 0x40;
            assert!(VmState::decode(&bad)
                .unwrap_err()
                .to_string()
                .contains("checksum"));
        }
        assert!(VmState::decode(&vec![0; trailer_bytes()])
            .unwrap_err()
            .to_string()
            .contains("no restore state"));
        let mut v2 = t.clone();
        v2[8] = 2;
        assert!(VmState::decode(&v2).is_err());
    }

    #[test]
    fn unknown_optional_records_are_skipped_and_mandatory_ones_refused() {
        let mut body = Vec::new();
        let mut meta = vec![0u8; 16];
        meta[8] = 100;
        record(&mut body, Kind::Meta, &meta);
        record(
            &mut body,
            Kind::Layout,
            &[0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0],
        );
        record(&mut body, Kind::HvmContext, &[1, 2, 3]);
        record(&mut body, Kind::ConfigJson, b"{}");
        let seal = |body: &[u8]| {
            let mut t = MAGIC.to_vec();
            t.extend_from_slice(&VERSION.to_le_bytes());
            t.extend_from_slice(&(body.len() as u32).to_le_bytes());
            t.extend_from_slice(&Sha256::digest(body));
            t.extend_from_slice(body);
            t
        };
        let mut optional = body.clone();
        optional.extend_from_slice(&0x8000_0077u32.to_le_bytes());
        optional.extend_from_slice(&3u32.to_le_bytes());
        optional.extend_from_slice(&[9, 9, 9, 0, 0, 0, 0, 0]);
        let s = VmState::decode(&seal(&optional)).unwrap();
        assert_eq!((s.interval_ms, s.layout.len()), (100, 4));
        let mut mandatory = body;
        mandatory.extend_from_slice(&0x77u32.to_le_bytes());
        mandatory.extend_from_slice(&0u32.to_le_bytes());
        assert!(VmState::decode(&seal(&mandatory))
            .unwrap_err()
            .to_string()
            .contains("unknown mandatory"));
    }

    #[test]
    fn a_state_too_big_for_the_trailer_is_an_error_not_a_truncation() {
        let mut s = sample();
        s.config_json = "x".repeat(trailer_bytes());
        assert!(s.encode().unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn the_config_comes_from_xl_list_without_its_domid() {
        let out = br#"[{"domid": 7, "config": {"c_info": {"type": "pvh", "name": "vm", "domid": 7}, "b_info": {}}}]"#;
        let c = config_from_xl_list(out).unwrap();
        assert!(c.contains(r#""name":"vm""#) && !c.contains("domid"), "{c}");
        assert!(config_from_xl_list(b"[]").is_err());
    }
}
