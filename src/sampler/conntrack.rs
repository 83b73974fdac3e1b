//! One question to the kernel's connection tracking (ctnetlink): where did a connection really
//! go? A DNATed connection's reply tuple has the real backend as its source.
//!
//! The table is per network namespace; the agent asks in its own, the host's, where a node's
//! DNAT (kube-proxy, or any nftables/iptables rule) happens. Asking needs CAP_NET_ADMIN.
use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Status, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

/// What conntrack says about one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// DNATed: the real destination.
    To(SocketAddr),
    /// Tracked and not DNATed: the destination is the real one.
    None,
    /// Not in the table (never tracked, or expired).
    Unknown,
}

pub struct Conntrack {
    socket: Socket,
    sequence: u32,
}

impl Conntrack {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Self { socket, sequence: 0 })
    }

    /// Looks up the TCP connection `from` -> `to` by its original tuple.
    pub fn translation(&mut self, from: SocketAddr, to: SocketAddr) -> io::Result<Translation> {
        self.sequence = self.sequence.wrapping_add(1);
        let family = if from.is_ipv4() {
            NetfilterProtoFamily::IPv4
        } else {
            NetfilterProtoFamily::IPv6
        };
        let original = vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(from.ip()),
                IPTuple::DestinationAddress(to.ip()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Tcp),
                ProtoTuple::SourcePort(from.port()),
                ProtoTuple::DestinationPort(to.port()),
            ]),
        ];
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleOrig(original)]),
            )),
        );
        packet.finalize();
        let mut buffer = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let mut found = Translation::Unknown;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let message = NetlinkMessage::<NetfilterMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let length = message.header.length as usize;
                let ours = message.header.sequence_number == self.sequence;
                match message.payload {
                    NetlinkPayload::Error(e) if ours => {
                        return match e.code {
                            None => Ok(found),
                            Some(code) if -code.get() == libc::ENOENT => Ok(Translation::Unknown),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner:
                            NetfilterMessageInner::Conntrack(
                                ConntrackMessage::Get(attributes) | ConntrackMessage::New(attributes),
                            ),
                        ..
                    }) if ours => found = translation_of(&attributes),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
            }
        }
    }
}

fn translation_of(attributes: &[ConntrackAttribute]) -> Translation {
    let mut dnat = false;
    let mut reply_source: (Option<IpAddr>, Option<u16>) = (None, None);
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaStatus(status) => dnat = status.contains(Status::DstNat),
            ConntrackAttribute::CtaTupleReply(tuples) => {
                for tuple in tuples {
                    match tuple {
                        Tuple::Ip(ips) => {
                            for ip in ips {
                                if let IPTuple::SourceAddress(a) = ip {
                                    reply_source.0 = Some(*a);
                                }
                            }
                        }
                        Tuple::Proto(protos) => {
                            for p in protos {
                                if let ProtoTuple::SourcePort(port) = p {
                                    reply_source.1 = Some(*port);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (dnat, reply_source) {
        (true, (Some(ip), Some(port))) => Translation::To(SocketAddr::new(ip, port)),
        _ => Translation::None,
    }
}
