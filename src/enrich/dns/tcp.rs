//! DNS over TCP: each message is preceded by its two-byte length and may span segments. Each
//! stream's segments are put back together in sequence order. A stream remembers where it is
//! between messages, so that a retransmission is recognised and a reordered segment never
//! passes for the start of a message; after a gap (or a capture cut short) the stream is out of
//! step and its segments are ignored until it goes quiet.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Streams remembered at once; a resolver rarely has more than a few open. With a message of at
/// most 64 KiB in flight each, at most 4 MiB.
const MAX_STREAMS: usize = 64;
/// A stream quiet for this long is forgotten (a partial message with it, counted).
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub cgroup_id: u64,
    pub server: IpAddr,
    pub client: SocketAddr,
}

#[derive(Debug)]
struct Stream {
    /// The sequence number of the next byte expected.
    next_seq: u32,
    /// The start of a message not yet complete.
    partial: Vec<u8>,
    last: Instant,
    /// False after a gap: nothing more of this stream can be framed.
    in_step: bool,
}

impl Stream {
    /// Nothing more of this stream can be framed; returns whether it could be until now.
    fn fall_out_of_step(&mut self) -> bool {
        self.partial = Vec::new();
        std::mem::replace(&mut self.in_step, false)
    }
}

#[derive(Debug, Default)]
pub struct TcpStreams {
    streams: HashMap<StreamKey, Stream>,
    /// Streams given up with a message unfinished: a gap, a capture cut short, a timeout, or no
    /// room.
    pub abandoned: u64,
}

impl TcpStreams {
    /// Adds one segment; returns the messages it completed.
    pub fn segment(&mut self, key: StreamKey, seq: u32, payload: &[u8], now: Instant) -> Vec<Vec<u8>> {
        let stream = self.stream(key, seq, now);
        if !stream.in_step {
            return Vec::new();
        }
        // signed distance from the expected byte: wraps correctly around 2^32
        let ahead = seq.wrapping_sub(stream.next_seq) as i32;
        if ahead > 0 {
            let was_in_step = stream.fall_out_of_step();
            self.abandoned += u64::from(was_in_step);
            return Vec::new();
        }
        // bytes already taken (a retransmission, or one that overlaps): skipped
        let Some(fresh) = payload.get(ahead.unsigned_abs() as usize..).filter(|f| !f.is_empty()) else {
            return Vec::new();
        };
        stream.next_seq = seq.wrapping_add(payload.len() as u32);
        stream.partial.extend_from_slice(fresh);
        let mut messages = Vec::new();
        let mut start = 0;
        while let Some(len) = stream
            .partial
            .get(start..start + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        {
            let Some(message) = stream.partial.get(start + 2..start + 2 + len) else {
                break;
            };
            messages.push(message.to_vec());
            start += 2 + len;
        }
        stream.partial.drain(..start);
        messages
    }

    /// Marks a stream out of step: one of its segments could not be read whole.
    pub fn abandon(&mut self, key: StreamKey, now: Instant) {
        let was_in_step = self.stream(key, 0, now).fall_out_of_step();
        self.abandoned += u64::from(was_in_step);
    }

    /// The stream of `key`, seen now; a new one (expecting `seq` next) made room for first.
    fn stream(&mut self, key: StreamKey, seq: u32, now: Instant) -> &mut Stream {
        if !self.streams.contains_key(&key) {
            self.make_room(now);
        }
        let stream = self.streams.entry(key).or_insert(Stream {
            next_seq: seq,
            partial: Vec::new(),
            last: now,
            in_step: true,
        });
        stream.last = now;
        stream
    }

    /// Forgets quiet streams, and the quietest one when still full.
    fn make_room(&mut self, now: Instant) {
        let mut lost = 0;
        self.streams.retain(|_, s| {
            let keep = now.duration_since(s.last) < STREAM_TIMEOUT;
            lost += u64::from(!keep && !s.partial.is_empty());
            keep
        });
        if self.streams.len() >= MAX_STREAMS {
            let quietest = self.streams.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k);
            if let Some(stream) = quietest.and_then(|k| self.streams.remove(&k)) {
                lost += u64::from(!stream.partial.is_empty());
            }
        }
        self.abandoned += lost;
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> StreamKey {
        StreamKey {
            cgroup_id: 1,
            server: "10.0.0.53".parse().expect("ip"),
            client: SocketAddr::new("10.0.0.1".parse().expect("ip"), port),
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
        assert!(s.segment(key(1), 100, &first[..5], now).is_empty());
        let mut rest = first[5..].to_vec();
        rest.extend(framed(b"second"));
        rest.extend(&framed(b"third")[..3]);
        let got = s.segment(key(1), 105, &rest, now);
        assert_eq!(got, vec![b"hello world".to_vec(), b"second".to_vec()]);
        // a retransmission of taken bytes changes nothing
        assert!(s.segment(key(1), 105, &rest, now).is_empty());
        let tail = &framed(b"third")[3..];
        let seq = 105 + rest.len() as u32;
        assert_eq!(s.segment(key(1), seq, tail, now), vec![b"third".to_vec()]);
        assert_eq!(s.abandoned, 0);
    }

    #[test]
    fn a_retransmitted_complete_message_is_not_taken_twice_and_an_overlap_is_trimmed() {
        let mut s = TcpStreams::default();
        let now = Instant::now();
        let a = framed(b"first");
        assert_eq!(s.segment(key(1), 1000, &a, now), vec![b"first".to_vec()]);
        assert!(s.segment(key(1), 1000, &a, now).is_empty(), "retransmission");
        // a segment that repeats the first message's tail and carries the next one whole
        let b = framed(b"second");
        let mut overlapping = a[a.len() - 3..].to_vec();
        overlapping.extend(&b);
        let seq = 1000 + a.len() as u32 - 3;
        assert_eq!(s.segment(key(1), seq, &overlapping, now), vec![b"second".to_vec()]);
    }

    #[test]
    fn a_gap_puts_the_stream_out_of_step_until_it_goes_quiet() {
        let mut s = TcpStreams::default();
        let now = Instant::now();
        let m = framed(b"0123456789");
        assert!(s.segment(key(1), 1, &m[..4], now).is_empty());
        // bytes 4..8 never arrive
        assert!(s.segment(key(1), 9, &m[8..], now).is_empty());
        assert_eq!(s.abandoned, 1);
        // what follows the gap is not read as the start of a message
        assert!(s.segment(key(1), 1 + m.len() as u32, &framed(b"x"), now).is_empty());
        assert_eq!(s.abandoned, 1);
        // once quiet, the stream is forgotten and a new exchange is read again
        let later = now + STREAM_TIMEOUT;
        assert!(s.segment(key(2), 1, &framed(b"other"), later).len() == 1);
        assert_eq!(s.len(), 1, "the quiet stream was forgotten");
        assert_eq!(
            s.segment(key(1), 500, &framed(b"again"), later),
            vec![b"again".to_vec()]
        );
    }

    #[test]
    fn streams_are_bounded_and_an_unfinished_one_pushed_out_is_counted() {
        let mut s = TcpStreams::default();
        let now = Instant::now();
        let m = framed(b"unfinished message");
        assert!(s.segment(key(0), 1, &m[..5], now).is_empty());
        for port in 1..=(MAX_STREAMS as u16) {
            let t = now + Duration::from_millis(u64::from(port));
            assert_eq!(s.segment(key(port), 1, &framed(b"done"), t).len(), 1);
        }
        assert!(s.len() <= MAX_STREAMS);
        assert_eq!(s.abandoned, 1, "the quietest stream held a partial message");
    }
}
