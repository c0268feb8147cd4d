//! The appliance's conversation with dom0 through xenstore: reading the
//! configuration, writing the status, and taking shutdown requests. Generic
//! over the xenstore [`Transport`] so that it is unit-tested on the host
//! against the in-memory daemon.

use crate::config::{self, Config, CONFIG_DIR, EFFECTIVE_KEYS, KEYS_DIR, STATUS_DIR};
use crate::xenstore::{Client, Transport, NO_TX};
use crate::xs_wire::XsError;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// The plain (non key) configuration entries.
pub const PLAIN_KEYS: [&str; 6] = [
    "ipv4-address",
    "ipv4-prefix",
    "ipv4-gateway",
    "tcp-port",
    "memory-budget-mib",
    "log-level",
];

/// Attempts of a xenstore transaction before giving up on EAGAIN.
pub const TX_ATTEMPTS: u32 = 8;

/// The raw configuration as read from xenstore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawConfig {
    /// Values by key relative to the config directory (`tcp-port`, `keys/<id>`).
    pub values: BTreeMap<String, String>,
    /// Children of `keys/`.
    pub key_ids: Vec<String>,
}

/// Reads the whole configuration directory in one transaction (retried on
/// conflict). Absent keys are simply not in the result.
pub fn fetch_config<T: Transport>(xs: &mut Client<T>) -> Result<RawConfig, XsError> {
    xs.transaction(TX_ATTEMPTS, |xs, tx| {
        let mut raw = RawConfig::default();
        for k in PLAIN_KEYS {
            if let Some(v) = xs.read_opt(tx, &format!("{CONFIG_DIR}/{k}"))? {
                raw.values.insert(k.to_string(), v);
            }
        }
        raw.key_ids = match xs.directory(tx, &format!("{CONFIG_DIR}/{KEYS_DIR}")) {
            Ok(ids) => ids,
            Err(XsError::NoEntry) => Vec::new(),
            Err(e) => return Err(e),
        };
        for id in &raw.key_ids {
            let k = format!("{KEYS_DIR}/{id}");
            if let Some(v) = xs.read_opt(tx, &format!("{CONFIG_DIR}/{k}"))? {
                raw.values.insert(k, v);
            }
        }
        Ok(raw)
    })
}

/// Validates a raw configuration against the schema and the storage
/// capacity; the error is the reason to report in the status.
pub fn evaluate(raw: &RawConfig, capacity_kib: u64) -> Result<Config, String> {
    if raw.values.is_empty() && raw.key_ids.is_empty() {
        return Err(format!("no configuration under {CONFIG_DIR}"));
    }
    let cfg =
        config::parse(&|k| raw.values.get(k).cloned(), &raw.key_ids).map_err(|e| e.to_string())?;
    config::check_budget(&cfg, capacity_kib).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Writes the first status: state `booting` and the version (few round trips:
/// the rest follows once the configuration is read).
pub fn publish_booting<T: Transport>(xs: &mut Client<T>, version: &str) -> Result<(), XsError> {
    xs.write(NO_TX, &format!("{STATUS_DIR}/version"), version)?;
    xs.write(NO_TX, &format!("{STATUS_DIR}/reason"), "")?;
    xs.write(
        NO_TX,
        &format!("{STATUS_DIR}/state"),
        config::State::Booting.as_str(),
    )
}

/// Writes status entries in one transaction; with `remove_effective`, also
/// removes the effective-config keys (the configuration is not valid).
pub fn publish<T: Transport>(
    xs: &mut Client<T>,
    entries: &[(&str, String)],
    remove_effective: bool,
) -> Result<(), XsError> {
    xs.transaction(TX_ATTEMPTS, |xs, tx| {
        for (k, v) in entries {
            xs.write(tx, &format!("{STATUS_DIR}/{k}"), v)?;
        }
        if remove_effective {
            for k in EFFECTIVE_KEYS {
                xs.rm(tx, &format!("{STATUS_DIR}/{k}"))?;
            }
        }
        Ok(())
    })
}

/// What the toolstack asked for through `control/shutdown`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// `xl shutdown` ("poweroff", or "halt").
    Poweroff,
    /// `xl reboot`.
    Reboot,
    /// Anything else (e.g. "suspend"), not supported yet.
    Unsupported(String),
}

/// Reads `control/shutdown` and, if it holds a request, acknowledges it by
/// writing it back empty (in one transaction, as Linux does).
pub fn take_shutdown_request<T: Transport>(
    xs: &mut Client<T>,
) -> Result<Option<ShutdownRequest>, XsError> {
    let v = xs.transaction(TX_ATTEMPTS, |xs, tx| {
        let v = xs.read_opt(tx, "control/shutdown")?.unwrap_or_default();
        if !v.is_empty() {
            xs.write(tx, "control/shutdown", "")?;
        }
        Ok(v)
    })?;
    Ok(match v.as_str() {
        "" => None,
        "poweroff" | "halt" => Some(ShutdownRequest::Poweroff),
        "reboot" => Some(ShutdownRequest::Reboot),
        other => Some(ShutdownRequest::Unsupported(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{status_entries, MemoryReport, State};
    use crate::xenstore::mock::MockStore;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn configured() -> Client<MockStore> {
        let mut m = MockStore::default();
        for (k, v) in [
            ("ipv4-address", "10.99.0.50"),
            ("ipv4-prefix", "24"),
            ("ipv4-gateway", "none"),
            ("tcp-port", "7780"),
            ("memory-budget-mib", "32"),
            ("keys/vm-a", KEY),
        ] {
            m.nodes.insert(format!("{CONFIG_DIR}/{k}"), v.into());
        }
        Client::new(m)
    }

    #[test]
    fn a_complete_config_is_fetched_and_valid() {
        let mut xs = configured();
        let raw = fetch_config(&mut xs).unwrap();
        assert_eq!(raw.key_ids, vec!["vm-a"]);
        assert_eq!(raw.values.len(), 6);
        let cfg = evaluate(&raw, 50 * 1024).unwrap();
        assert_eq!(cfg.port, 7780);
        assert_eq!(cfg.keys.len(), 1);
    }

    #[test]
    fn fetch_retries_when_dom0_writes_concurrently() {
        let mut xs = configured();
        xs.transport_mut().conflicts = 2;
        assert!(fetch_config(&mut xs).is_ok());
    }

    #[test]
    fn reasons_for_an_empty_a_bad_and_a_too_big_config() {
        let mut xs = Client::new(MockStore::default());
        let raw = fetch_config(&mut xs).unwrap();
        assert_eq!(
            evaluate(&raw, 1 << 20).unwrap_err(),
            "no configuration under resilire/config"
        );

        let mut xs = configured();
        xs.transport_mut()
            .nodes
            .remove(&format!("{CONFIG_DIR}/tcp-port"));
        let raw = fetch_config(&mut xs).unwrap();
        assert_eq!(
            evaluate(&raw, 1 << 20).unwrap_err(),
            "config key 'tcp-port': missing"
        );

        let mut xs = configured();
        let raw = fetch_config(&mut xs).unwrap();
        assert!(evaluate(&raw, 16 * 1024)
            .unwrap_err()
            .starts_with("config key 'memory-budget-mib'"));
    }

    #[test]
    fn status_is_written_and_effective_keys_removed_when_invalid() {
        let mut xs = configured();
        let cfg = evaluate(&fetch_config(&mut xs).unwrap(), 1 << 20).unwrap();
        let mem = MemoryReport {
            total_kib: 65536,
            used_kib: 500,
            capacity_kib: 56000,
        };
        publish(
            &mut xs,
            &status_entries(State::Ready, "", "0.1.0", mem, 3, Some(&cfg)),
            false,
        )
        .unwrap();
        let get = |xs: &mut Client<MockStore>, k: &str| {
            xs.transport_mut()
                .nodes
                .get(&format!("{STATUS_DIR}/{k}"))
                .cloned()
        };
        assert_eq!(get(&mut xs, "state").as_deref(), Some("ready"));
        assert_eq!(get(&mut xs, "tcp-port").as_deref(), Some("7780"));
        assert_eq!(get(&mut xs, "keys").as_deref(), Some("vm-a"));
        publish(
            &mut xs,
            &status_entries(State::Misconfigured, "bad", "0.1.0", mem, 4, None),
            true,
        )
        .unwrap();
        assert_eq!(get(&mut xs, "state").as_deref(), Some("misconfigured"));
        assert_eq!(get(&mut xs, "reason").as_deref(), Some("bad"));
        assert_eq!(get(&mut xs, "tcp-port"), None);
        assert_eq!(get(&mut xs, "keys"), None);
    }

    #[test]
    fn booting_status_is_small() {
        let mut xs = Client::new(MockStore::default());
        publish_booting(&mut xs, "0.1.0").unwrap();
        assert_eq!(
            xs.transport_mut()
                .nodes
                .get("resilire/status/state")
                .map(String::as_str),
            Some("booting")
        );
        assert_eq!(xs.transport_mut().nodes.len(), 3);
    }

    #[test]
    fn shutdown_requests_are_read_and_acknowledged() {
        let mut xs = Client::new(MockStore::default());
        assert_eq!(take_shutdown_request(&mut xs).unwrap(), None);
        for (v, want) in [
            ("poweroff", ShutdownRequest::Poweroff),
            ("halt", ShutdownRequest::Poweroff),
            ("reboot", ShutdownRequest::Reboot),
            ("suspend", ShutdownRequest::Unsupported("suspend".into())),
        ] {
            xs.transport_mut()
                .nodes
                .insert("control/shutdown".into(), v.into());
            assert_eq!(take_shutdown_request(&mut xs).unwrap(), Some(want));
            assert_eq!(
                xs.transport_mut().nodes["control/shutdown"],
                "",
                "request acknowledged"
            );
        }
        assert_eq!(take_shutdown_request(&mut xs).unwrap(), None);
    }
}
