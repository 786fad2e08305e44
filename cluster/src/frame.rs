//! Length- and CRC-checked frames on a byte stream, `[len u32][crc32c u32]
//! [body]`, shared by the Raft transport and the client protocol. A bad
//! frame is an error value (the caller closes the connection), never a
//! panic, and memory grows with the bytes that arrive, not with the length
//! a peer claims.

use std::io::{ErrorKind, Read, Write};

/// Reads exactly `buf.len()` bytes from `stream`, waiting at most
/// `timeout_ms` (a handshake: the peer must say who it is promptly); the
/// stream's read timeout is what it was before afterwards.
pub fn read_exact_within(
    stream: &mut crate::link::Link,
    buf: &mut [u8],
    timeout_ms: u64,
) -> std::io::Result<()> {
    let before = stream.tcp().read_timeout()?;
    stream.set_read_timeout(Some(std::time::Duration::from_millis(timeout_ms)))?;
    stream.read_exact(buf)?;
    stream.set_read_timeout(before)
}

/// Writes one frame whose body is the concatenation of `parts`.
pub fn write(out: &mut impl Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len)
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "frame larger than 4 GiB"))?;
    let crc = parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc.to_le_bytes())?;
    for part in parts {
        out.write_all(part)?;
    }
    Ok(())
}

/// Reads one frame's body into `body` (its length in `min..=max`).
/// `Ok(false)` at a clean end of the stream, or when nothing came before
/// the stream's read timeout (an idle connection).
pub fn read(
    input: &mut impl Read,
    body: &mut Vec<u8>,
    min: usize,
    max: usize,
) -> Result<bool, String> {
    let mut header = [0u8; 8];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
        // Quiet past the stream's read timeout between frames: the end of
        // an idle connection, not a bad frame.
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Ok(false)
        }
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(min..=max).contains(&len) {
        return Err(format!(
            "frame length {len} outside the {min}..={max}-byte limit"
        ));
    }
    body.clear();
    input
        .take(len as u64)
        .read_to_end(body)
        .map_err(|e| e.to_string())?;
    if body.len() != len {
        return Err(format!("frame cut short: {} of {len} bytes", body.len()));
    }
    if crc32c::crc32c(body) != crc {
        return Err("frame checksum mismatch".into());
    }
    Ok(true)
}
