//! Outgoing TCP connections, one way for everyone: the proxies' upstream
//! connections (with the firewall's mark, source addresses and denied
//! destinations) and the scanners' connections (plain, bounded in time).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// Why an outgoing connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `[steering] deny_destinations` covers the destination.
    #[error("connections to {0} are denied by policy (deny_destinations)")]
    Denied(SocketAddr),
    /// Refused, unreachable, reset.
    #[error("connecting to {0}: {1}")]
    Failed(SocketAddr, #[source] io::Error),
    /// No answer within the connect timeout.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    /// Every local port towards this destination is in use.
    #[error(
        "no free source port from {source_ip} to {dst} (ip_local_port_range is exhausted; list more [proxy] source_addresses)"
    )]
    NoSourcePort {
        /// The destination.
        dst: SocketAddr,
        /// The source address that ran out (`*` when the kernel chose it).
        source_ip: String,
    },
}

impl ConnectError {
    /// Whether the destination itself said no (refused, unreachable, reset),
    /// as opposed to a local limit or policy.
    pub fn is_remote(&self) -> bool {
        matches!(self, ConnectError::Failed(..) | ConnectError::Timeout(_))
    }
}

/// How the gateway connects to the original destinations of steered flows.
#[derive(Debug)]
pub struct Dialer {
    /// Bound on each connect.
    pub timeout: Duration,
    /// SO_MARK on every upstream socket (0: none), so that the firewall's
    /// OUTPUT rules can tell the gateway's traffic apart.
    pub mark: u32,
    /// Source addresses to connect from, used in turn (empty: the kernel's
    /// choice). A source whose ports run out is skipped for the next.
    pub sources: Vec<IpAddr>,
    /// Destinations the gateway refuses to connect to.
    pub deny: Vec<IpNet>,
    next: AtomicUsize,
}

impl Dialer {
    /// A dialer with these settings.
    pub fn new(timeout: Duration, mark: u32, sources: Vec<IpAddr>, deny: Vec<IpNet>) -> Dialer {
        Dialer { timeout, mark, sources, deny, next: AtomicUsize::new(0) }
    }

    /// Connects to `dst`, honouring the deny list, the mark and the sources.
    pub async fn connect(&self, dst: SocketAddr) -> Result<TcpStream, ConnectError> {
        if self.deny.iter().any(|n| n.contains(&dst.ip())) {
            return Err(ConnectError::Denied(dst));
        }
        let sources: Vec<IpAddr> = self.sources.iter().copied().filter(|s| s.is_ipv4() == dst.is_ipv4()).collect();
        if sources.is_empty() {
            return self.attempt(dst, None).await;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for k in 0..sources.len() {
            match self.attempt(dst, Some(sources[(first + k) % sources.len()])).await {
                Err(e @ ConnectError::NoSourcePort { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(ConnectError::Timeout(dst)))
    }

    async fn attempt(&self, dst: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
        let no_port = |e: &io::Error| e.raw_os_error() == Some(nix::errno::Errno::EADDRNOTAVAIL as i32);
        let source_ip = source.map_or_else(|| "*".to_string(), |s| s.to_string());
        let socket = self.socket(dst, source).map_err(|e| {
            if no_port(&e) {
                ConnectError::NoSourcePort { dst, source_ip: source_ip.clone() }
            } else {
                ConnectError::Failed(dst, e)
            }
        })?;
        match tokio::time::timeout(self.timeout, socket.connect(dst)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) if no_port(&e) => Err(ConnectError::NoSourcePort { dst, source_ip }),
            Ok(Err(e)) => Err(ConnectError::Failed(dst, e)),
            Err(_) => Err(ConnectError::Timeout(dst)),
        }
    }

    fn socket(&self, dst: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpSocket> {
        let domain = if dst.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let s = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
        if self.mark != 0 {
            s.set_mark(self.mark)?;
        }
        if let Some(ip) = source {
            // Let connect() pick the port per destination: bind() alone would
            // take one from the pool shared by all destinations.
            nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
                .map_err(io::Error::from)?;
            s.bind(&SocketAddr::new(ip, 0).into())?;
        }
        Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(s)))
    }
}

/// Connects to `addr` (a scanner), bounded by `wait`.
pub async fn connect_timeout(addr: &str, wait: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(wait, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr} timed out"))),
    }
}

/// Makes the next close of `stream` send RST instead of FIN: the peer
/// learns that the stream is broken, never that it ended cleanly.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn denied_destinations_are_refused_before_any_packet() {
        let d = Dialer::new(Duration::from_secs(1), 0, Vec::new(), vec!["192.0.2.0/24".parse().unwrap()]);
        let e = d.connect("192.0.2.7:80".parse().unwrap()).await.unwrap_err();
        assert!(matches!(e, ConnectError::Denied(_)), "{e}");
        assert!(!e.is_remote());
    }

    #[tokio::test]
    async fn marks_and_sources_apply() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let d = Dialer::new(Duration::from_secs(1), 0x77, vec!["127.0.0.2".parse().unwrap()], Vec::new());
        let s = d.connect(addr).await.unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(socket2::SockRef::from(&s).mark().unwrap(), 0x77);
    }
}
