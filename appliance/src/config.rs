//! The appliance's configuration schema and its validation (see CONFIG.md).
//!
//! dom0 writes the keys under `resilire/config/` of the appliance domain's
//! home path; [`parse`] turns them into a [`Config`] or a [`ConfigError`]
//! naming the faulty key, which the appliance reports in its status.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;

/// Relative xenstore directory holding the configuration.
pub const CONFIG_DIR: &str = "resilire/config";
/// Relative xenstore directory where the appliance reports its status.
pub const STATUS_DIR: &str = "resilire/status";
/// Sub-directory of [`CONFIG_DIR`] with one key per authorised primary.
pub const KEYS_DIR: &str = "keys";

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error = 1,
    /// Errors and warnings.
    Warn,
    /// The default.
    Info,
    /// Verbose.
    Debug,
    /// Very verbose.
    Trace,
}

impl LogLevel {
    /// Parses "error" | "warn" | "info" | "debug" | "trace".
    pub fn parse(s: &str) -> Option<LogLevel> {
        Some(match s {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }

    /// The name used in xenstore.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A key authorising one primary VM.
#[derive(Clone, PartialEq, Eq)]
pub struct PrimaryKey {
    /// The VM id (the key's name under `keys/`).
    pub vm_id: String,
    /// 32 bytes of key material.
    pub key: [u8; 32],
}

impl fmt::Debug for PrimaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "PrimaryKey({}, <32 bytes>)", self.vm_id)
    }
}

/// A complete, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The appliance's IPv4 address.
    pub address: Ipv4Addr,
    /// Its prefix length (1..=32).
    pub prefix: u8,
    /// Default gateway, inside the subnet; `None` when written as "none".
    pub gateway: Option<Ipv4Addr>,
    /// TCP port the appliance listens on.
    pub port: u16,
    /// Memory the checkpoint store may use, MiB.
    pub memory_budget_mib: u32,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Authorised primaries, sorted by VM id.
    pub keys: Vec<PrimaryKey>,
}

/// A missing or malformed configuration key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, relative to the config directory.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key '{}': {}", self.key, self.reason)
    }
}

fn bad(key: &str, reason: String) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason,
    }
}

fn required<'a>(get: &'a dyn Fn(&str) -> Option<String>, key: &str) -> Result<String, ConfigError> {
    match get(key) {
        Some(v) => Ok(v.trim().to_string()),
        None => Err(bad(key, "missing".to_string())),
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// True for a VM id usable as a key name: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_vm_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// Validates a configuration.
///
/// `get(key)` returns the value of `resilire/config/<key>` (`None` if absent);
/// `key_ids` are the children of `resilire/config/keys`.
pub fn parse(
    get: &dyn Fn(&str) -> Option<String>,
    key_ids: &[String],
) -> Result<Config, ConfigError> {
    let addr_s = required(get, "ipv4-address")?;
    let address: Ipv4Addr = addr_s
        .parse()
        .map_err(|_| bad("ipv4-address", format!("not an IPv4 address: '{addr_s}'")))?;
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err(bad(
            "ipv4-address",
            format!("not a host address: '{addr_s}'"),
        ));
    }

    let prefix_s = required(get, "ipv4-prefix")?;
    let prefix: u8 = match prefix_s.parse() {
        Ok(p) if (1..=32).contains(&p) => p,
        _ => {
            return Err(bad(
                "ipv4-prefix",
                format!("not a prefix length in 1..32: '{prefix_s}'"),
            ))
        }
    };

    let gw_s = required(get, "ipv4-gateway")?;
    let gateway = if gw_s == "none" {
        None
    } else {
        let gw: Ipv4Addr = gw_s.parse().map_err(|_| {
            bad(
                "ipv4-gateway",
                format!("not an IPv4 address or 'none': '{gw_s}'"),
            )
        })?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        };
        if u32::from(gw) & mask != u32::from(address) & mask {
            return Err(bad(
                "ipv4-gateway",
                format!("{gw} is outside {address}/{prefix}"),
            ));
        }
        if gw == address {
            return Err(bad(
                "ipv4-gateway",
                format!("{gw} is the appliance's own address"),
            ));
        }
        Some(gw)
    };

    let port_s = required(get, "tcp-port")?;
    let port: u16 = match port_s.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(bad(
                "tcp-port",
                format!("not a port in 1..65535: '{port_s}'"),
            ))
        }
    };

    let budget_s = required(get, "memory-budget-mib")?;
    let memory_budget_mib: u32 = match budget_s.parse() {
        Ok(m) if m > 0 => m,
        _ => {
            return Err(bad(
                "memory-budget-mib",
                format!("not a positive number of MiB: '{budget_s}'"),
            ))
        }
    };

    let level_s = get("log-level")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "info".to_string());
    let log_level = LogLevel::parse(&level_s).ok_or_else(|| {
        bad(
            "log-level",
            format!("not one of error|warn|info|debug|trace: '{level_s}'"),
        )
    })?;

    if key_ids.is_empty() {
        return Err(bad(KEYS_DIR, "no primary keys configured".to_string()));
    }
    let mut keys = Vec::with_capacity(key_ids.len());
    for id in key_ids {
        let k = format!("{KEYS_DIR}/{id}");
        if !valid_vm_id(id) {
            return Err(bad(&k, "VM id must be 1..64 of [A-Za-z0-9._-]".to_string()));
        }
        let v = required(get, &k)?;
        let key =
            parse_hex32(&v).ok_or_else(|| bad(&k, "not 64 hex digits (32 bytes)".to_string()))?;
        keys.push(PrimaryKey {
            vm_id: id.clone(),
            key,
        });
    }
    keys.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));

    Ok(Config {
        address,
        prefix,
        gateway,
        port,
        memory_budget_mib,
        log_level,
        keys,
    })
}

/// Checks the budget against what the appliance can actually store.
pub fn check_budget(cfg: &Config, capacity_kib: u64) -> Result<(), ConfigError> {
    let cap_mib = capacity_kib / 1024;
    if cfg.memory_budget_mib as u64 > cap_mib {
        return Err(bad(
            "memory-budget-mib",
            format!(
                "{} MiB exceeds the appliance's free memory of {} MiB",
                cfg.memory_budget_mib, cap_mib
            ),
        ));
    }
    Ok(())
}

/// The appliance's life-cycle state as written to `status/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Starting up, config not yet read.
    Booting,
    /// Configured and accepting work.
    Ready,
    /// Configuration missing or invalid: up, but refusing work.
    Misconfigured,
    /// Shutting down on request.
    Stopping,
}

impl State {
    /// The value written to xenstore.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Booting => "booting",
            State::Ready => "ready",
            State::Misconfigured => "misconfigured",
            State::Stopping => "stopping",
        }
    }
}

/// Memory figures reported in the status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// All memory of the domain (nr_pages * 4 KiB).
    pub total_kib: u64,
    /// Memory in use (image, page tables, heap in use, allocated frames).
    pub used_kib: u64,
    /// Memory available for page-granular storage.
    pub capacity_kib: u64,
}

/// Status keys whose value comes from the configuration; removed when the
/// configuration is not valid.
pub const EFFECTIVE_KEYS: [&str; 7] = [
    "ipv4-address",
    "ipv4-prefix",
    "ipv4-gateway",
    "tcp-port",
    "memory-budget-mib",
    "log-level",
    "keys",
];

/// The (key, value) pairs to write under `resilire/status/`.
pub fn status_entries(
    state: State,
    reason: &str,
    version: &str,
    mem: MemoryReport,
    uptime_s: u64,
    cfg: Option<&Config>,
) -> Vec<(&'static str, String)> {
    let mut v = alloc::vec![
        ("state", state.as_str().to_string()),
        ("reason", reason.to_string()),
        ("version", version.to_string()),
        ("mem_total_kib", format!("{}", mem.total_kib)),
        ("mem_used_kib", format!("{}", mem.used_kib)),
        ("capacity_kib", format!("{}", mem.capacity_kib)),
        ("uptime_s", format!("{uptime_s}")),
    ];
    if let Some(c) = cfg {
        let ids: Vec<&str> = c.keys.iter().map(|k| k.vm_id.as_str()).collect();
        v.push(("ipv4-address", c.address.to_string()));
        v.push(("ipv4-prefix", format!("{}", c.prefix)));
        v.push((
            "ipv4-gateway",
            c.gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".to_string()),
        ));
        v.push(("tcp-port", format!("{}", c.port)));
        v.push(("memory-budget-mib", format!("{}", c.memory_budget_mib)));
        v.push(("log-level", c.log_level.as_str().to_string()));
        v.push(("keys", ids.join(",")));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const K1: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    fn good() -> BTreeMap<String, String> {
        [
            ("ipv4-address", "10.0.0.2"),
            ("ipv4-prefix", "24"),
            ("ipv4-gateway", "10.0.0.1"),
            ("tcp-port", "7300"),
            ("memory-budget-mib", "32"),
            ("log-level", "debug"),
            ("keys/vm-b", K1),
            ("keys/vm-a", K1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn run(m: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let ids: Vec<String> = m
            .keys()
            .filter_map(|k| k.strip_prefix("keys/"))
            .map(|s| s.to_string())
            .collect();
        parse(&|k| m.get(k).cloned(), &ids)
    }

    #[test]
    fn a_good_config_parses() {
        let c = run(&good()).unwrap();
        assert_eq!(c.address, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(c.prefix, 24);
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(c.port, 7300);
        assert_eq!(c.memory_budget_mib, 32);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys[0].vm_id, "vm-a");
        assert_eq!(c.keys[0].key[0], 0x00);
        assert_eq!(c.keys[0].key[31], 0xff);
        assert!(
            !format!("{:?}", c).contains("aabb"),
            "keys must not be printed"
        );
    }

    #[test]
    fn defaults_and_none_gateway() {
        let mut m = good();
        m.remove("log-level");
        m.insert("ipv4-gateway".into(), "none".into());
        let c = run(&m).unwrap();
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.gateway, None);
    }

    fn err_for(key: &str, value: Option<&str>) -> ConfigError {
        let mut m = good();
        match value {
            Some(v) => m.insert(key.to_string(), v.to_string()),
            None => m.remove(key),
        };
        run(&m).unwrap_err()
    }

    #[test]
    fn each_bad_key_is_named() {
        assert_eq!(err_for("ipv4-address", None).key, "ipv4-address");
        assert_eq!(err_for("ipv4-address", None).reason, "missing");
        assert_eq!(
            err_for("ipv4-address", Some("10.0.0.300")).key,
            "ipv4-address"
        );
        assert_eq!(err_for("ipv4-address", Some("0.0.0.0")).key, "ipv4-address");
        assert_eq!(err_for("ipv4-prefix", Some("33")).key, "ipv4-prefix");
        assert_eq!(
            err_for("ipv4-gateway", Some("10.0.1.1")).key,
            "ipv4-gateway"
        );
        assert_eq!(
            err_for("ipv4-gateway", Some("10.0.0.2")).key,
            "ipv4-gateway"
        );
        assert_eq!(
            err_for("tcp-port", Some("banana")).to_string(),
            "config key 'tcp-port': not a port in 1..65535: 'banana'"
        );
        assert_eq!(err_for("tcp-port", Some("0")).key, "tcp-port");
        assert_eq!(err_for("tcp-port", Some("70000")).key, "tcp-port");
        assert_eq!(
            err_for("memory-budget-mib", Some("-1")).key,
            "memory-budget-mib"
        );
        assert_eq!(err_for("log-level", Some("loud")).key, "log-level");
        assert_eq!(err_for("keys/vm-a", Some("abcd")).key, "keys/vm-a");
        assert_eq!(err_for("keys/vm-a", Some(&"g".repeat(64))).key, "keys/vm-a");
    }

    #[test]
    fn keys_are_required_and_ids_checked() {
        let mut m = good();
        m.retain(|k, _| !k.starts_with("keys/"));
        assert_eq!(run(&m).unwrap_err().key, "keys");
        let mut m = good();
        m.insert("keys/bad id".into(), K1.into());
        assert_eq!(run(&m).unwrap_err().key, "keys/bad id");
    }

    #[test]
    fn budget_against_capacity() {
        let c = run(&good()).unwrap();
        assert!(check_budget(&c, 40 * 1024).is_ok());
        let e = check_budget(&c, 20 * 1024).unwrap_err();
        assert_eq!(e.key, "memory-budget-mib");
        assert!(e.reason.contains("20 MiB"));
    }

    #[test]
    fn status_echoes_the_effective_config_without_key_material() {
        let c = run(&good()).unwrap();
        let mem = MemoryReport {
            total_kib: 65536,
            used_kib: 5000,
            capacity_kib: 50000,
        };
        let s = status_entries(State::Ready, "", "0.1.0", mem, 12, Some(&c));
        let get = |k: &str| {
            s.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("state"), "ready");
        assert_eq!(get("mem_total_kib"), "65536");
        assert_eq!(get("tcp-port"), "7300");
        assert_eq!(get("keys"), "vm-a,vm-b");
        assert!(s.iter().all(|(_, v)| !v.contains("aabb")));
        let s = status_entries(State::Misconfigured, "x", "0.1.0", mem, 1, None);
        assert!(s.iter().all(|(k, _)| !EFFECTIVE_KEYS.contains(k)));
    }
}
