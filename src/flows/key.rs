use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// Which end of the connection this host is, as seen in the handshake (never from port numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This host sent the SYN.
    Client,
    /// This host accepted the connection.
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// A flow pair: every connection between the same two addresses to the same service port, seen
/// from the same end. The client's ephemeral port is not part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    pub local: IpAddr,
    pub remote: IpAddr,
    /// The server's port, whichever end this host is.
    pub service_port: u16,
    pub role: Role,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Client => write!(f, "{} -> {}:{} (client)", self.local, self.remote, self.service_port),
            Role::Server => write!(f, "{}:{} <- {} (server)", self.local, self.service_port, self.remote),
        }
    }
}
