//! DNS answers as the kernel handed them up (`flowtel_dns` into the `dns_answers` ring buffer),
//! decoded into owned captures. Parsing the messages is `enrich::dns`'s job, not this module's.
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use libbpf_rs::{RingBuffer, RingBufferBuilder};

use super::decode;
use super::skel::types;
use super::SamplerError;

/// The transport one capture arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// One payload from port 53, as a socket of the cgroup received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCapture {
    /// The receiving socket's cgroup: whose resolution this was.
    pub cgroup_id: u64,
    pub server: IpAddr,
    pub client: SocketAddr,
    pub transport: DnsTransport,
    /// TCP: the segment's sequence number (for reassembly); 0 for UDP.
    pub tcp_seq: u32,
    /// The payload's length on the wire; longer than `payload` when the kernel cut it short.
    pub wire_len: u32,
    pub payload: Vec<u8>,
}

impl DnsCapture {
    /// Whether the kernel cut the payload at its capture limit.
    pub fn cut_short(&self) -> bool {
        self.wire_len as usize > self.payload.len()
    }
}

/// Reads the ring buffer; the records wait in it between polls.
pub(super) struct DnsRing {
    ring: RingBuffer<'static>,
    received: Rc<RefCell<Vec<DnsCapture>>>,
    /// Records that did not decode (never expected: the layout is the skeleton's).
    undecodable: Rc<Cell<u64>>,
}

impl DnsRing {
    pub fn new(map: &dyn libbpf_rs::MapCore) -> Result<Self, SamplerError> {
        let received = Rc::new(RefCell::new(Vec::new()));
        let undecodable = Rc::new(Cell::new(0));
        let (sink, bad) = (Rc::clone(&received), Rc::clone(&undecodable));
        let mut builder = RingBufferBuilder::new();
        builder
            .add(map, move |record: &[u8]| {
                match decode::dns_event(record) {
                    Some(capture) => sink.borrow_mut().push(capture),
                    None => bad.set(bad.get() + 1),
                }
                0
            })
            .map_err(|source| SamplerError::Bpf {
                what: "opening the DNS answer ring buffer".into(),
                source,
            })?;
        let ring = builder.build().map_err(|source| SamplerError::Bpf {
            what: "opening the DNS answer ring buffer".into(),
            source,
        })?;
        Ok(Self {
            ring,
            received,
            undecodable,
        })
    }

    /// Every capture waiting in the ring buffer.
    pub fn drain(&mut self) -> Result<Vec<DnsCapture>, SamplerError> {
        self.ring.consume().map_err(|source| SamplerError::Bpf {
            what: "reading the DNS answer ring buffer".into(),
            source,
        })?;
        Ok(std::mem::take(&mut *self.received.borrow_mut()))
    }

    pub fn undecodable(&self) -> u64 {
        self.undecodable.get()
    }
}

/// The size of the kernel's event with a full payload (user space's copy is zero-padded to it).
pub(super) const EVENT_BYTES: usize = std::mem::size_of::<types::flowtel_dns_event>();
