//! Scenarios: shell scripts in `tests-qemu/scenarios/` that dom0 runs, with
//! a header the lab reads (`# lab: hosts=2 timeout=240 test=yes`), and the
//! runner that boots the hosts, follows their serial logs and decides.
//!
//! Markers a scenario prints on dom0's console (lib.sh has helpers):
//! - `LAB: PASS` (host 0, or any host once host 0 was killed; ends the run successfully)
//! - `LAB: FAIL <why>` (any host; ends the run)
//! - `LAB: KILL-HOST <n>` (the lab kills host n's QEMU process outright)
//! - `LAB: SHOW <text>` (shown on the terminal, also in quiet mode)

use crate::qemu::{Host, HostSpec};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A scenario and what its header says.
pub struct Scenario {
    /// File stem, e.g. "xen-boot".
    pub name: String,
    /// Number of lab hosts.
    pub hosts: usize,
    /// Limit for the whole run.
    pub timeout: Duration,
    /// Whether `lab test` runs it.
    pub in_tests: bool,
}

/// Reads every scenario in `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "sh") {
            out.push(parse(&path)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn parse(path: &Path) -> Result<Scenario> {
    let name = path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let text = std::fs::read_to_string(path)?;
    let header = text
        .lines()
        .find_map(|l| l.strip_prefix("# lab:"))
        .with_context(|| format!("{}: no '# lab:' header", path.display()))?;
    let mut sc = Scenario {
        name,
        hosts: 1,
        timeout: Duration::from_secs(120),
        in_tests: false,
    };
    for kv in header.split_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("{}: bad header field {kv}", path.display()))?;
        match k {
            "hosts" => sc.hosts = v.parse().context("hosts=")?,
            "timeout" => sc.timeout = Duration::from_secs(v.parse().context("timeout=")?),
            "test" => sc.in_tests = v == "yes",
            _ => bail!("{}: unknown header field {k}", path.display()),
        }
    }
    if sc.hosts == 0 || sc.hosts > 8 {
        bail!("{}: hosts must be 1..=8", path.display());
    }
    Ok(sc)
}

/// Images every host boots.
pub struct BootImages {
    /// Decompressed Xen.
    pub xen: PathBuf,
    /// dom0 kernel.
    pub kernel: PathBuf,
    /// dom0 initramfs (holds every scenario).
    pub initrd: PathBuf,
}

/// How a run ended.
pub struct Outcome {
    /// Passed?
    pub passed: bool,
    /// Why it ended.
    pub reason: String,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Where its logs are.
    pub log_dir: PathBuf,
}

/// Signatures of a host that died under the scenario.
const FATAL: &[&str] = &[
    "Kernel panic",
    "Panic on CPU",
    "general protection fault",
    "BUG: kernel",
];

/// Boots the scenario's hosts and follows them to a verdict.
pub fn run(sc: &Scenario, img: &BootImages, log_dir: &Path, live: bool) -> Result<Outcome> {
    std::fs::create_dir_all(log_dir)?;
    let net_port = 20000 + (std::process::id() % 20000) as u16;
    let mut hosts = Vec::new();
    for index in 0..sc.hosts {
        let spec = HostSpec {
            index,
            hosts: sc.hosts,
            scenario: &sc.name,
            xen: &img.xen,
            kernel: &img.kernel,
            initrd: &img.initrd,
            net_port,
            serial_log: log_dir.join(format!("host{index}.serial.log")),
        };
        hosts.push(Host::spawn(&spec)?);
    }
    let start = Instant::now();
    let verdict = follow(sc, &mut hosts, live, start);
    drop(hosts);
    let (passed, reason) = verdict?;
    let elapsed = start.elapsed();
    std::fs::write(
        log_dir.join("verdict.txt"),
        format!(
            "{} {} after {:.1}s\n",
            if passed { "PASS" } else { "FAIL" },
            reason,
            elapsed.as_secs_f64()
        ),
    )?;
    Ok(Outcome {
        passed,
        reason,
        elapsed,
        log_dir: log_dir.to_path_buf(),
    })
}

fn follow(sc: &Scenario, hosts: &mut [Host], live: bool, start: Instant) -> Result<(bool, String)> {
    loop {
        for i in 0..hosts.len() {
            for line in hosts[i].new_lines()? {
                if live {
                    println!("[host{i}] {line}");
                }
                if let Some(m) = line.find("LAB: ").map(|p| &line[p + 5..]) {
                    if let Some(text) = m.strip_prefix("SHOW ") {
                        if !live {
                            println!("  [host{i}] {text}");
                        }
                    } else if m.starts_with("PASS") && (i == 0 || hosts[0].killed) {
                        // host0 decides, unless it was killed (failover):
                        // then the survivors do.
                        return Ok((true, format!("host{i} printed PASS")));
                    } else if let Some(why) = m.strip_prefix("FAIL") {
                        return Ok((false, format!("host{i} failed:{why}")));
                    } else if let Some(n) = m.strip_prefix("KILL-HOST ") {
                        let n: usize = n
                            .trim()
                            .parse()
                            .with_context(|| format!("bad KILL-HOST in: {line}"))?;
                        if let Some(h) = hosts.get_mut(n) {
                            println!("  lab: killing host{n} as host{i} asked");
                            h.kill();
                            h.killed = true;
                        }
                    }
                }
                if let Some(sig) = FATAL.iter().find(|s| line.contains(*s)) {
                    return Ok((false, format!("host{i}: {sig}: {line}")));
                }
            }
            if !hosts[i].killed && !hosts[i].alive() {
                return Ok((
                    false,
                    format!("host{i}: QEMU exited before the scenario ended"),
                ));
            }
        }
        if start.elapsed() > sc.timeout {
            return Ok((false, format!("timeout after {}s", sc.timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_parsed_and_checked() {
        let dir = std::env::temp_dir().join(format!("lab-sc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("two.sh"),
            "#!/bin/sh\n# lab: hosts=2 timeout=90 test=yes\n",
        )
        .unwrap();
        let sc = parse(&dir.join("two.sh")).unwrap();
        assert_eq!((sc.hosts, sc.timeout.as_secs(), sc.in_tests), (2, 90, true));
        std::fs::write(dir.join("bad.sh"), "# lab: hosts=0\n").unwrap();
        assert!(parse(&dir.join("bad.sh")).is_err());
        std::fs::write(dir.join("none.sh"), "echo hi\n").unwrap();
        assert!(parse(&dir.join("none.sh")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
