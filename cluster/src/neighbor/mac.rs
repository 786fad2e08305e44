//! Frames in clear with a per-frame MAC (`--data-tls off`).
//!
//! Both ends still make the mutual-TLS handshake (who the peer is comes
//! from its certificate, as with TLS on). They then derive two keys from
//! the session with the TLS exporter (RFC 8446 section 7.5), one per
//! direction, leave TLS and send frames in clear on the TCP socket, each
//! followed by a [`TAG_BYTES`] tag: the payload goes from its buffer to
//! the socket and from the socket to its buffer with no pass through TLS
//! records. The tag authenticates the frame's header, its payload and its
//! place in the stream (a sequence number per direction), so a frame that
//! was changed, dropped, replayed, reordered or reflected back is refused
//! and the connection closed. Payloads are not confidential: for trusted
//! fabrics only.
//!
//! The tag is two GMACs (AES-256-GCM with nothing to encrypt) under the
//! direction's key, with nonces that are never reused (the frame's
//! sequence number and which of the two it is): the first over the
//! payload, the second over the header and the first tag.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use super::frame::{FrameError, HEADER_BYTES};

/// Bytes of the tag after each frame.
pub const TAG_BYTES: usize = 16;
/// ALPN name of frames through TLS records.
pub const ALPN_TLS: &[u8] = b"datenlord-frames-tls";
/// ALPN name of frames in clear with a MAC.
pub const ALPN_MAC: &[u8] = b"datenlord-frames-mac";

const LABEL: &[u8] = b"EXPORTER-datenlord-neighbor-frame-mac";
const KEY_BYTES: usize = 32;

/// One direction's key and the number of the next frame.
pub struct Direction {
    key: LessSafeKey,
    seq: u64,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The keys of one connection's end: what it sends, what it receives.
#[derive(Debug)]
pub struct Keys {
    /// Tags the frames this end sends.
    pub send: Direction,
    /// Checks the frames this end receives.
    pub receive: Direction,
}

/// Which end of the connection derives the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The side that connected (sends requests).
    Client,
    /// The side that accepted (sends answers).
    Server,
}

impl Keys {
    /// Derives both directions' keys with `export` (the TLS session's
    /// exporter: `(output, label, context)`).
    pub fn derive<E>(end: End, mut export: E) -> Result<Self, String>
    where
        E: FnMut(&mut [u8], &[u8], &[u8]) -> Result<(), String>,
    {
        let mut key = |context: &[u8]| -> Result<Direction, String> {
            let mut bytes = [0u8; KEY_BYTES];
            export(&mut bytes, LABEL, context)?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| "deriving the frame key failed".to_string())?;
            Ok(Direction {
                key: LessSafeKey::new(key),
                seq: 0,
            })
        };
        let requests = key(b"requests")?;
        let answers = key(b"answers")?;
        Ok(match end {
            End::Client => Self {
                send: requests,
                receive: answers,
            },
            End::Server => Self {
                send: answers,
                receive: requests,
            },
        })
    }
}

fn nonce(seq: u64, part: u8) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8] = part;
    Nonce::assume_unique_for_key(bytes)
}

impl Direction {
    fn tag_at(&self, seq: u64, header: &[u8], payload: &[u8]) -> Result<[u8; TAG_BYTES], String> {
        let failed = |_| "computing a frame tag failed".to_string();
        let inner = self
            .key
            .seal_in_place_separate_tag(nonce(seq, 0), Aad::from(payload), &mut [])
            .map_err(failed)?;
        // The header and the first tag, on the stack (no allocation per
        // frame).
        let mut outer_aad = [0u8; HEADER_BYTES + TAG_BYTES];
        let header_len = header.len();
        if header_len > HEADER_BYTES {
            return Err(format!("a {header_len}-byte frame header"));
        }
        let aad_len = header_len + TAG_BYTES;
        outer_aad[..header_len].copy_from_slice(header);
        outer_aad[header_len..aad_len].copy_from_slice(inner.as_ref());
        let outer = self
            .key
            .seal_in_place_separate_tag(nonce(seq, 1), Aad::from(&outer_aad[..aad_len]), &mut [])
            .map_err(failed)?;
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(outer.as_ref());
        Ok(tag)
    }

    /// The tag of the next frame this end sends.
    pub fn seal(&mut self, header: &[u8], payload: &[u8]) -> Result<[u8; TAG_BYTES], String> {
        let tag = self.tag_at(self.seq, header, payload)?;
        self.seq += 1;
        Ok(tag)
    }

    /// Checks the tag of the next frame this end receives.
    pub fn open(&mut self, header: &[u8], payload: &[u8], tag: &[u8]) -> Result<(), FrameError> {
        let expected = self
            .tag_at(self.seq, header, payload)
            .map_err(FrameError::Malformed)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected, tag)
            .map_err(|_| FrameError::Mac(self.seq))?;
        self.seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of one session (the same exporter secret).
    fn pair(secret: u8) -> (Keys, Keys) {
        let export = |out: &mut [u8], label: &[u8], context: &[u8]| {
            for (i, b) in out.iter_mut().enumerate() {
                *b = secret ^ label[i % label.len()] ^ context[i % context.len()];
            }
            Ok(())
        };
        (
            Keys::derive(End::Client, export).expect("client"),
            Keys::derive(End::Server, export).expect("server"),
        )
    }

    #[test]
    fn frames_in_order_are_accepted_in_both_directions() {
        let (mut client, mut server) = pair(1);
        for i in 0..3u8 {
            let tag = client.send.seal(&[i; 8], &[i; 100]).expect("seal");
            server.receive.open(&[i; 8], &[i; 100], &tag).expect("open");
            let tag = server.send.seal(&[i; 8], &[]).expect("seal");
            client.receive.open(&[i; 8], &[], &tag).expect("open");
        }
    }

    #[test]
    fn a_changed_dropped_replayed_or_reflected_frame_is_refused() {
        let (mut client, mut server) = pair(2);
        let t0 = client.send.seal(b"header00", b"payload").expect("seal");
        let t1 = client.send.seal(b"header01", b"payload").expect("seal");
        // A changed payload, a changed header, a changed tag.
        assert!(server.receive.open(b"header00", b"payloaD", &t0).is_err());
        assert!(server.receive.open(b"header0X", b"payload", &t0).is_err());
        let mut bad = t0;
        bad[0] ^= 1;
        assert!(server.receive.open(b"header00", b"payload", &bad).is_err());
        // Bytes moved between header and payload.
        assert!(server.receive.open(b"header0", b"0payload", &t0).is_err());
        // A dropped frame: the next one does not check at the first place.
        assert!(server.receive.open(b"header01", b"payload", &t1).is_err());
        server
            .receive
            .open(b"header00", b"payload", &t0)
            .expect("the first");
        // A replay of the first at the second place.
        assert!(server.receive.open(b"header00", b"payload", &t0).is_err());
        server
            .receive
            .open(b"header01", b"payload", &t1)
            .expect("the second");
        // The server's own frame sent back to it.
        let answer = server.send.seal(b"answer00", b"block").expect("seal");
        assert!(server.receive.open(b"answer00", b"block", &answer).is_err());
        client
            .receive
            .open(b"answer00", b"block", &answer)
            .expect("the client takes it");
    }

    #[test]
    fn another_session_s_keys_do_not_check() {
        let (mut client, _) = pair(3);
        let (_, mut other) = pair(4);
        let tag = client.send.seal(b"h", b"p").expect("seal");
        assert_eq!(
            other.receive.open(b"h", b"p", &tag),
            Err(FrameError::Mac(0))
        );
    }
}
