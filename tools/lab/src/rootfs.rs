//! An in-memory description of an initramfs tree: which host files go where,
//! with the shared libraries of every binary and the dependencies of every
//! kernel module resolved from the host, then written out as a cpio archive.

use crate::cpio::{CpioWriter, Member};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

enum Source {
    Dir,
    HostFile(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
}

/// A tree of files to pack into an initramfs.
#[derive(Default)]
pub struct RootFs {
    entries: BTreeMap<String, (u32, Source)>,
}

impl RootFs {
    /// Adds a directory and its parents.
    pub fn dir(&mut self, path: &str) {
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            self.entries
                .entry(cur.clone())
                .or_insert((0o755, Source::Dir));
        }
    }

    fn parent_of(&mut self, path: &str) {
        if let Some(i) = path.rfind('/') {
            self.dir(&path[..i]);
        }
    }

    /// Copies a host file to `dest` (its mode is kept).
    pub fn file(&mut self, host: impl AsRef<Path>, dest: &str) -> Result<()> {
        let host = host.as_ref();
        let meta =
            fs::metadata(host).with_context(|| format!("missing host file {}", host.display()))?;
        use std::os::unix::fs::PermissionsExt;
        self.parent_of(dest);
        self.entries.insert(
            dest.to_string(),
            (
                meta.permissions().mode() & 0o7777,
                Source::HostFile(host.to_path_buf()),
            ),
        );
        Ok(())
    }

    /// Adds a file with the given content and mode.
    pub fn bytes(&mut self, dest: &str, mode: u32, content: impl Into<Vec<u8>>) {
        self.parent_of(dest);
        self.entries
            .insert(dest.to_string(), (mode, Source::Bytes(content.into())));
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, dest: &str, target: &str) {
        self.parent_of(dest);
        self.entries.insert(
            dest.to_string(),
            (0o777, Source::Symlink(target.to_string())),
        );
    }

    /// Copies a dynamically linked host binary to `dest` with every library
    /// `ldd` names, at the same paths as on the host.
    pub fn binary(&mut self, host: impl AsRef<Path>, dest: &str) -> Result<()> {
        let host = host.as_ref();
        self.file(host, dest)?;
        for lib in shared_libraries(host)? {
            let s = lib.to_string_lossy().to_string();
            if !self.entries.contains_key(&s) {
                self.file(&lib, &s)?;
            }
        }
        Ok(())
    }

    /// Copies every regular file below a host directory to `dest`.
    pub fn tree(&mut self, host: &Path, dest: &str) -> Result<()> {
        for entry in fs::read_dir(host).with_context(|| format!("reading {}", host.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            let target = format!("{}/{}", dest.trim_end_matches('/'), name);
            if entry.file_type()?.is_dir() {
                self.tree(&entry.path(), &target)?;
            } else {
                self.file(entry.path(), &target)?;
            }
        }
        Ok(())
    }

    /// Adds kernel modules by name with their dependencies from `modules.dep`,
    /// and writes `/etc/lab-modules`: the paths in load order.
    pub fn modules(&mut self, kver: &str, names: &[&str]) -> Result<()> {
        let base = PathBuf::from(format!("/lib/modules/{kver}"));
        let dep_text = fs::read_to_string(base.join("modules.dep"))
            .with_context(|| format!("reading modules.dep of kernel {kver}"))?;
        let deps = parse_modules_dep(&dep_text);
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let path = find_module(&deps, name)
                .with_context(|| format!("kernel {kver} has no module {name}"))?;
            visit_module(&deps, &path, &mut seen, &mut order);
        }
        let mut list = String::new();
        for rel in &order {
            if !rel.ends_with(".ko") {
                bail!("module {rel} is compressed; the lab loads plain .ko files only");
            }
            let dest = format!("/lib/modules/{kver}/{rel}");
            self.file(base.join(rel), &dest)?;
            list.push_str(&dest);
            list.push('\n');
        }
        self.bytes("/etc/lab-modules", 0o644, list);
        Ok(())
    }

    /// Writes the tree as an uncompressed newc archive (the kernel unpacks
    /// it faster than a compressed one, and TCG makes every cycle count).
    pub fn write_cpio(&self, out: &Path) -> Result<u64> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = CpioWriter::new(std::io::BufWriter::new(file));
        for (path, (mode, src)) in &self.entries {
            match src {
                Source::Dir => w.add(path, *mode, Member::Dir)?,
                Source::Bytes(b) => w.add(path, *mode, Member::File(b))?,
                Source::Symlink(t) => w.add(path, *mode, Member::Symlink(t))?,
                Source::HostFile(h) => {
                    let data = fs::read(h).with_context(|| format!("reading {}", h.display()))?;
                    w.add(path, *mode, Member::File(&data))?
                }
            }
        }
        use std::io::Write;
        w.finish()?.flush()?;
        Ok(fs::metadata(out)?.len())
    }
}

/// The libraries (and the dynamic loader) a binary needs, as `ldd` lists them.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("{}: library not found: {line}", bin.display());
        }
        let path = match line.split_once("=> ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// `modules.dep` as a map from module path to the paths it depends on.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.trim().to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

fn find_module(deps: &BTreeMap<String, Vec<String>>, name: &str) -> Option<String> {
    let want = name.replace('-', "_");
    deps.keys()
        .find(|p| {
            let file = p.rsplit('/').next().unwrap_or(p);
            let stem = file.split(".ko").next().unwrap_or(file);
            stem.replace('-', "_") == want
        })
        .cloned()
}

fn visit_module(
    deps: &BTreeMap<String, Vec<String>>,
    path: &str,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(path.to_string()) {
        return;
    }
    for d in deps.get(path).into_iter().flatten() {
        visit_module(deps, d, seen, order);
    }
    order.push(path.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let deps = parse_modules_dep(
            "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n",
        );
        let path = find_module(&deps, "bridge").unwrap();
        let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
        visit_module(&deps, &path, &mut seen, &mut order);
        assert_eq!(
            order,
            [
                "kernel/net/llc/llc.ko",
                "kernel/net/802/stp.ko",
                "kernel/net/bridge/bridge.ko"
            ]
        );
        assert!(find_module(&deps, "nope").is_none());
    }

    #[test]
    fn module_names_match_with_dash_or_underscore() {
        let deps = parse_modules_dep("kernel/drivers/xen/xen-evtchn.ko:\n");
        assert!(find_module(&deps, "xen_evtchn").is_some());
    }
}
