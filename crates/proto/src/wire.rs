//! Little-endian field readers and writers, checked and panic-free.

use crate::error::ProtoError;
use alloc::vec::Vec;

/// A reader over a payload that never indexes out of bounds.
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `b`.
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Cursor { rest: b }
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.rest.len() < n {
            return Err(ProtoError::Malformed(what));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    /// Takes a fixed-size array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    /// Reads a u8.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a little-endian u16.
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian u32.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian u64.
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads bytes prefixed by a u16 length, checking the limit before taking them.
    pub(crate) fn bytes16(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], ProtoError> {
        let n = usize::from(self.u16(what)?);
        check_len(what, n, max)?;
        self.take(n, what)
    }

    /// Reads bytes prefixed by a u32 length, checking the limit before taking them.
    pub(crate) fn bytes32(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], ProtoError> {
        let n = usize::try_from(self.u32(what)?).map_err(|_| ProtoError::Malformed(what))?;
        check_len(what, n, max)?;
        self.take(n, what)
    }

    /// Reads a UTF-8 string prefixed by a u16 length.
    pub(crate) fn str16(&mut self, what: &'static str, max: usize) -> Result<&'a str, ProtoError> {
        core::str::from_utf8(self.bytes16(what, max)?).map_err(|_| ProtoError::Malformed(what))
    }

    /// Reads a UTF-8 string prefixed by a u32 length.
    pub(crate) fn str32(&mut self, what: &'static str, max: usize) -> Result<&'a str, ProtoError> {
        core::str::from_utf8(self.bytes32(what, max)?).map_err(|_| ProtoError::Malformed(what))
    }

    /// All remaining bytes.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }
}

/// Fails with [`ProtoError::FieldTooLong`] when `len > max`.
pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), ProtoError> {
    if len > max {
        Err(ProtoError::FieldTooLong { field, len, max })
    } else {
        Ok(())
    }
}

/// Appends a u16-length-prefixed byte string after checking its limit.
pub(crate) fn put_bytes16(
    out: &mut Vec<u8>,
    what: &'static str,
    b: &[u8],
    max: usize,
) -> Result<(), ProtoError> {
    check_len(what, b.len(), max.min(usize::from(u16::MAX)))?;
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// Appends a u32-length-prefixed byte string after checking its limit.
pub(crate) fn put_bytes32(
    out: &mut Vec<u8>,
    what: &'static str,
    b: &[u8],
    max: usize,
) -> Result<(), ProtoError> {
    check_len(what, b.len(), max.min(u32::MAX as usize))?;
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}
