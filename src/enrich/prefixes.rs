//! Longest-prefix match over IPv4 and IPv6 prefixes, backed by `prefix-trie` (a tree bitmap):
//! lookups cost the same whether a list holds ten prefixes or AWS's ten thousand.
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

#[derive(Clone)]
pub struct PrefixTable<T> {
    v4: PrefixMap<Ipv4Net, T>,
    v6: PrefixMap<Ipv6Net, T>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        Self {
            v4: PrefixMap::new(),
            v6: PrefixMap::new(),
        }
    }
}

impl<T> std::fmt::Debug for PrefixTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrefixTable({} IPv4, {} IPv6)", self.v4.len(), self.v6.len())
    }
}

impl<T> PrefixTable<T> {
    /// Host bits are ignored (`10.0.1.7/24` is `10.0.1.0/24`). Returns the value it replaced.
    pub fn insert(&mut self, prefix: IpNet, value: T) -> Option<T> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.insert(p, value),
            IpNet::V6(p) => self.v6.insert(p, value),
        }
    }

    /// The value stored for exactly this prefix.
    pub fn get_exact(&self, prefix: &IpNet) -> Option<&T> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.get(&p),
            IpNet::V6(p) => self.v6.get(&p),
        }
    }

    pub fn get_exact_mut(&mut self, prefix: &IpNet) -> Option<&mut T> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.get_mut(&p),
            IpNet::V6(p) => self.v6.get_mut(&p),
        }
    }

    /// The longest prefix holding `addr`. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
    /// dual-stack socket reports) is looked up as the IPv4 address it carries.
    pub fn lookup(&self, addr: IpAddr) -> Option<(IpNet, &T)> {
        match addr.to_canonical() {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(p, v)| (IpNet::V4(p), v)),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(p, v)| (IpNet::V6(p), v)),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.v4.iter().map(|(_, v)| v).chain(self.v6.iter().map(|(_, v)| v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn longest_prefix_wins_for_both_families() {
        let mut t = PrefixTable::default();
        t.insert(net("10.0.0.0/8"), "wide");
        t.insert(net("10.0.1.0/24"), "narrow");
        t.insert(net("2001:db8::/32"), "v6-wide");
        t.insert(net("2001:db8:1::/48"), "v6-narrow");
        assert_eq!(t.lookup(ip("10.0.1.9")), Some((net("10.0.1.0/24"), &"narrow")));
        assert_eq!(t.lookup(ip("10.9.9.9")).map(|(_, v)| *v), Some("wide"));
        assert_eq!(t.lookup(ip("2001:db8:1::5")).map(|(_, v)| *v), Some("v6-narrow"));
        assert_eq!(t.lookup(ip("2001:db8:2::5")).map(|(_, v)| *v), Some("v6-wide"));
        assert_eq!(t.lookup(ip("192.0.2.1")), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn mapped_addresses_and_host_bits() {
        let mut t = PrefixTable::default();
        t.insert(net("10.0.1.7/24"), 1);
        assert_eq!(t.get_exact(&net("10.0.1.0/24")), Some(&1));
        assert_eq!(t.lookup(ip("::ffff:10.0.1.20")).map(|(_, v)| *v), Some(1));
    }
}
