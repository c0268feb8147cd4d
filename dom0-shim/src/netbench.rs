//! Plain TCP throughput between two dom0s: the baseline the appliance's
//! receive-and-commit throughput is compared with in the same lab run.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Accepts connections on `port` and discards what they send, forever.
pub fn sink(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("listening on {port}"))?;
    for conn in l.incoming() {
        let mut c = conn?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            // The sender waits for this byte: the data has all arrived.
            let _ = c.write_all(&[1]);
            let _ = total;
        });
    }
    Ok(())
}

/// Sends `mib` MiB to `addr` and returns MiB/s, counted until the sink
/// confirms it has read everything.
pub fn blast(addr: &str, mib: u64) -> Result<f64> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr} is not ip:port"))?;
    // Bounded waits: a peer that is not up yet fails fast, so callers can retry.
    let mut c = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(60)))?;
    c.set_write_timeout(Some(Duration::from_secs(60)))?;
    let buf = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    for _ in 0..mib {
        c.write_all(&buf)?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let mut done = [0u8; 1];
    c.read_exact(&mut done)
        .context("waiting for the sink's confirmation")?;
    Ok(mib as f64 / t0.elapsed().as_secs_f64())
}
