//! The gateway's listening sockets. They are bound to loopback ports, but
//! with IP_TRANSPARENT they accept connections that TC assigned to them for
//! any destination: the accepted socket's local address is the address the
//! client dialled.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

/// Opens a transparent listener on loopback `port` for one family.
pub fn transparent(port: u16, v6: bool) -> std::io::Result<TcpListener> {
    let (domain, addr) = if v6 {
        (Domain::IPV6, SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
    } else {
        (Domain::IPV4, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
    // No SO_REUSEPORT: bpf_sk_assign refuses reuseport sockets.
    socket.set_reuse_address(true)?;
    if v6 {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
