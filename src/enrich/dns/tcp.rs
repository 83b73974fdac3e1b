//! DNS over TCP: each message is preceded by its two-byte length and may span segments. The
//! segments of each stream are put back together in sequence order; a gap drops the stream's
//! partial message (counted by the caller as malformed when what follows does not parse).
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Streams with a message in flight; a resolver rarely has more than a few at once.
const MAX_STREAMS: usize = 256;
/// A partial message older than this is abandoned.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub cgroup_id: u64,
    pub server: IpAddr,
    pub client: SocketAddr,
}

#[derive(Debug)]
struct Partial {
    next_seq: u32,
    bytes: Vec<u8>,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct TcpStreams {
    partial: HashMap<StreamKey, Partial>,
    /// Partial messages given up: a gap, a timeout, or no room.
    pub abandoned: u64,
}

impl TcpStreams {
    /// Adds one segment; returns the messages it completed.
    pub fn segment(&mut self, key: StreamKey, seq: u32, payload: &[u8], now: Instant) -> Vec<Vec<u8>> {
        if let Some(p) = self.partial.get(&key) {
            // a retransmission of what was already taken
            if (seq.wrapping_sub(p.next_seq) as i32) < 0 {
                return Vec::new();
            }
            if seq != p.next_seq {
                self.partial.remove(&key);
                self.abandoned += 1;
            }
        }
        let mut bytes = match self.partial.remove(&key) {
            Some(p) => p.bytes,
            None => Vec::new(),
        };
        bytes.extend_from_slice(payload);
        let mut messages = Vec::new();
        let mut start = 0;
        while let Some(len) = bytes
            .get(start..start + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        {
            let Some(message) = bytes.get(start + 2..start + 2 + len) else {
                break;
            };
            messages.push(message.to_vec());
            start += 2 + len;
        }
        bytes.drain(..start);
        if !bytes.is_empty() {
            self.make_room(now);
            self.partial.insert(
                key,
                Partial {
                    next_seq: seq.wrapping_add(payload.len() as u32),
                    bytes,
                    last: now,
                },
            );
        }
        messages
    }

    fn make_room(&mut self, now: Instant) {
        let before = self.partial.len();
        self.partial.retain(|_, p| now.duration_since(p.last) < STREAM_TIMEOUT);
        if self.partial.len() >= MAX_STREAMS {
            let oldest = self.partial.iter().min_by_key(|(_, p)| p.last).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.partial.remove(&k);
            }
        }
        self.abandoned += (before - self.partial.len()) as u64;
    }

    /// Forgets a stream (its capture was cut short: what follows cannot be put together).
    pub fn abandon(&mut self, key: &StreamKey) {
        if self.partial.remove(key).is_some() {
            self.abandoned += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StreamKey {
        StreamKey {
            cgroup_id: 1,
            server: "10.0.0.53".parse().expect("ip"),
            client: "10.0.0.1:40000".parse().expect("addr"),
        }
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut v = (message.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(message);
        v
    }

    #[test]
    fn messages_split_across_segments_and_two_in_one_segment_come_out_whole() {
        let mut s = TcpStreams::default();
        let now = Instant::now();
        let first = framed(b"hello world");
        assert!(s.segment(key(), 100, &first[..5], now).is_empty());
        let mut rest = first[5..].to_vec();
        rest.extend(framed(b"second"));
        rest.extend(&framed(b"third")[..3]);
        let got = s.segment(key(), 105, &rest, now);
        assert_eq!(got, vec![b"hello world".to_vec(), b"second".to_vec()]);
        // a retransmission of taken bytes changes nothing
        assert!(s.segment(key(), 105, &rest, now).is_empty());
        let tail = &framed(b"third")[3..];
        let seq = 105 + rest.len() as u32;
        assert_eq!(s.segment(key(), seq, tail, now), vec![b"third".to_vec()]);
        assert_eq!(s.abandoned, 0);
    }

    #[test]
    fn a_gap_abandons_the_partial_message() {
        let mut s = TcpStreams::default();
        let now = Instant::now();
        let m = framed(b"0123456789");
        assert!(s.segment(key(), 1, &m[..4], now).is_empty());
        assert!(s.segment(key(), 9, &m[8..], now).is_empty());
        assert_eq!(s.abandoned, 1);
    }
}
