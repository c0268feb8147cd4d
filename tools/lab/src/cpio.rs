//! A writer for the `newc` cpio format, the one the Linux kernel unpacks as an
//! initramfs. Written here because it is forty lines and the crates on offer
//! either read only or pull in a filesystem walker we do not need.

use std::io::{self, Write};

/// Kind of an archive member.
pub enum Member<'a> {
    /// A directory.
    Dir,
    /// A regular file with its content.
    File(&'a [u8]),
    /// A symbolic link to the given target.
    Symlink(&'a str),
}

/// Streams members into a newc archive.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// Appends one member; `mode` holds the permission bits only.
    pub fn add(&mut self, path: &str, mode: u32, member: Member<'_>) -> io::Result<()> {
        let (kind, data): (u32, &[u8]) = match member {
            Member::Dir => (0o040000, &[]),
            Member::File(d) => (0o100000, d),
            Member::Symlink(t) => (0o120000, t.as_bytes()),
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.entry(
            path.trim_start_matches('/'),
            ino,
            kind | (mode & 0o7777),
            data,
        )
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 0, &[])?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, ino: u32, mode: u32, data: &[u8]) -> io::Result<()> {
        let namesize = name.len() + 1;
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_aligned_and_trailer_ends_archive() {
        let mut w = CpioWriter::new(Vec::new());
        w.add("/init", 0o755, Member::File(b"#!/bin/sh\n")).unwrap();
        w.add("bin", 0o755, Member::Dir).unwrap();
        w.add("bin/sh", 0o777, Member::Symlink("busybox")).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The first header's file size field is the script's length.
        assert_eq!(&out[54..62], format!("{:08x}", 10).as_bytes());
    }
}
