//! Index arithmetic of Xen's byte rings (console and xenstore).
//!
//! Both rings are a power-of-two byte array with free-running 32-bit producer
//! and consumer indices: `prod - cons` (wrapping) is the number of unread
//! bytes and `index & (size - 1)` the position in the array. These functions
//! work on plain slices so they can be unit-tested on the host; the PV driver
//! hands them the shared page after reading the indices with the right
//! barriers.

/// The other end published indices that cannot be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingCorrupt {
    /// Producer index seen.
    pub prod: u32,
    /// Consumer index seen.
    pub cons: u32,
}

/// Number of unread bytes, or an error if `prod` is more than `size` ahead.
pub fn used(prod: u32, cons: u32, size: usize) -> Result<usize, RingCorrupt> {
    debug_assert!(size.is_power_of_two());
    let n = prod.wrapping_sub(cons) as usize;
    if n > size {
        Err(RingCorrupt { prod, cons })
    } else {
        Ok(n)
    }
}

/// Number of bytes the producer may still write.
pub fn free(prod: u32, cons: u32, size: usize) -> Result<usize, RingCorrupt> {
    Ok(size - used(prod, cons, size)?)
}

/// Copies as much of `data` as fits into `ring` (the whole ring array) for a
/// producer at `prod` and a consumer at `cons`. Returns the number of bytes
/// copied; the caller publishes `prod + n` after a write barrier.
pub fn produce(ring: &mut [u8], prod: u32, cons: u32, data: &[u8]) -> Result<usize, RingCorrupt> {
    let size = ring.len();
    let n = free(prod, cons, size)?.min(data.len());
    let start = prod as usize & (size - 1);
    let first = n.min(size - start);
    ring[start..start + first].copy_from_slice(&data[..first]);
    ring[..n - first].copy_from_slice(&data[first..n]);
    Ok(n)
}

/// Copies up to `out.len()` unread bytes out of `ring`. Returns the number of
/// bytes copied; the caller publishes `cons + n` after a barrier.
pub fn consume(ring: &[u8], prod: u32, cons: u32, out: &mut [u8]) -> Result<usize, RingCorrupt> {
    let size = ring.len();
    let n = used(prod, cons, size)?.min(out.len());
    let start = cons as usize & (size - 1);
    let first = n.min(size - start);
    out[..first].copy_from_slice(&ring[start..start + first]);
    out[first..n].copy_from_slice(&ring[..n - first]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_full() {
        assert_eq!(used(5, 5, 16), Ok(0));
        assert_eq!(free(5, 5, 16), Ok(16));
        assert_eq!(used(21, 5, 16), Ok(16));
        assert_eq!(free(21, 5, 16), Ok(0));
        assert_eq!(used(22, 5, 16), Err(RingCorrupt { prod: 22, cons: 5 }));
    }

    #[test]
    fn indices_wrap_around_u32() {
        let prod = 3u32; // wrapped past u32::MAX
        let cons = u32::MAX - 4;
        assert_eq!(used(prod, cons, 16), Ok(8));
    }

    #[test]
    fn produce_wraps_in_the_array_and_stops_when_full() {
        let mut ring = [0u8; 8];
        // prod at 6, cons at 4: 2 used, 6 free; write 10 bytes -> 6 fit
        let n = produce(&mut ring, 6, 4, b"abcdefghij").unwrap();
        assert_eq!(n, 6);
        assert_eq!(&ring, b"cdef\0\0ab");
    }

    #[test]
    fn consume_round_trips_across_the_wrap() {
        let mut ring = [0u8; 8];
        let mut prod = u32::MAX - 2;
        let mut cons = prod;
        let mut got = Vec::new();
        for chunk in [&b"hello"[..], b" xen", b" ring!"] {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = produce(&mut ring, prod, cons, rest).unwrap();
                prod = prod.wrapping_add(n as u32);
                rest = &rest[n..];
                let mut out = [0u8; 3];
                let m = consume(&ring, prod, cons, &mut out).unwrap();
                cons = cons.wrapping_add(m as u32);
                got.extend_from_slice(&out[..m]);
            }
        }
        let mut out = [0u8; 8];
        let m = consume(&ring, prod, cons, &mut out).unwrap();
        got.extend_from_slice(&out[..m]);
        assert_eq!(got, b"hello xen ring!");
    }

    #[test]
    fn corrupt_indices_are_refused() {
        let mut ring = [0u8; 8];
        assert!(produce(&mut ring, 100, 0, b"x").is_err());
        assert!(consume(&ring, 100, 0, &mut [0u8; 4]).is_err());
    }
}
