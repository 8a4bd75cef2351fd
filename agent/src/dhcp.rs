//! A DHCPv4 client for the node's first address: DISCOVER, OFFER, REQUEST, ACK.
//!
//! Message building and reply parsing are pure ([`discover`], [`request`], [`parse_reply`]);
//! [`acquire`] is the thin socket shell. Requests set the broadcast flag, so that servers
//! answer to 255.255.255.255, which a UDP socket bound to the interface receives before the
//! interface has an address. Renewal and expiry come with the configuration issue.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

/// An address lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length from the subnet mask.
    pub prefix_len: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Lease time in seconds.
    pub lease_seconds: u32,
    /// The server that made the offer.
    pub server: Ipv4Addr,
}

fn base_message(xid: u32, mac: [u8; 6], kind: MessageType) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = Message::new_with_id(
        xid,
        unspecified,
        unspecified,
        unspecified,
        unspecified,
        &mac,
    );
    message.set_flags(Flags::default().set_broadcast());
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(kind));
    options.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
    ]));
    message
}

fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Encoding into a Vec only fails on values dhcproto cannot represent, which the
    // builders above never produce; an empty datagram would simply get no answer.
    let _ = message.encode(&mut Encoder::new(&mut bytes));
    bytes
}

/// A DHCPDISCOVER.
pub fn discover(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    encode(&base_message(xid, mac, MessageType::Discover))
}

/// A DHCPREQUEST for an offered lease.
pub fn request(xid: u32, mac: [u8; 6], offer: &Lease) -> Vec<u8> {
    let mut message = base_message(xid, mac, MessageType::Request);
    message
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.address));
    message
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(offer.server));
    encode(&message)
}

/// Parses a reply of type `expected` for transaction `xid`; `None` for anything else.
pub fn parse_reply(bytes: &[u8], xid: u32, expected: MessageType) -> Option<Lease> {
    let message = Message::decode(&mut Decoder::new(bytes)).ok()?;
    if message.xid() != xid || message.opcode() != v4::Opcode::BootReply {
        return None;
    }
    let options = message.opts();
    if options.msg_type() != Some(expected) {
        return None;
    }
    let mask = match options.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => *mask,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let router = match options.get(OptionCode::Router) {
        Some(DhcpOption::Router(routers)) => routers.first().copied(),
        _ => None,
    };
    let dns_servers = match options.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
        _ => Vec::new(),
    };
    let lease_seconds = match options.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(seconds)) => *seconds,
        _ => 3600,
    };
    let server = match options.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(server)) => *server,
        _ => message.siaddr(),
    };
    let address = message.yiaddr();
    if address.is_unspecified() {
        return None;
    }
    Some(Lease {
        address,
        prefix_len: u32::from(mask).count_ones() as u8,
        router,
        dns_servers,
        lease_seconds,
        server,
    })
}

/// Runs DISCOVER/REQUEST on `interface` until a lease is acknowledged or `timeout` passes.
pub async fn acquire(interface: &str, mac: [u8; 6], timeout: Duration) -> anyhow::Result<Lease> {
    let socket = client_socket(interface)?;
    let broadcast = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ std::process::id();
    let exchange = async {
        let mut buffer = vec![0u8; 1500];
        loop {
            socket.send_to(&discover(xid, mac), broadcast).await?;
            let Some(offer) = receive(&socket, &mut buffer, xid, MessageType::Offer).await else {
                continue;
            };
            socket
                .send_to(&request(xid, mac, &offer), broadcast)
                .await?;
            if let Some(lease) = receive(&socket, &mut buffer, xid, MessageType::Ack).await {
                return Ok::<Lease, anyhow::Error>(lease);
            }
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        anyhow::anyhow!(
            "no DHCP lease on {interface} within {} s",
            timeout.as_secs()
        )
    })?
}

async fn receive(
    socket: &tokio::net::UdpSocket,
    buffer: &mut [u8],
    xid: u32,
    expected: MessageType,
) -> Option<Lease> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let (length, _) = tokio::time::timeout_at(deadline, socket.recv_from(buffer))
            .await
            .ok()?
            .ok()?;
        if let Some(lease) = parse_reply(buffer.get(..length)?, xid, expected) {
            return Some(lease);
        }
    }
}

fn client_socket(interface: &str) -> anyhow::Result<tokio::net::UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .map_err(|errno| {
        anyhow::anyhow!(
            "cannot bind the DHCP socket to {interface}: {}",
            errno.desc()
        )
    })?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(0, 0, 0, 0, 68),
    )
    .map_err(|errno| anyhow::anyhow!("cannot bind UDP port 68: {}", errno.desc()))?;
    Ok(tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(
        fd,
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(xid: u32, kind: MessageType) -> Vec<u8> {
        let mut message = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        message.set_opcode(v4::Opcode::BootReply);
        let options = message.opts_mut();
        options.insert(DhcpOption::MessageType(kind));
        options.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        options.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        options.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 2, 3,
        )]));
        options.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        options.insert(DhcpOption::AddressLeaseTime(86400));
        encode(&message)
    }

    #[test]
    fn an_offer_becomes_a_lease() {
        let lease = parse_reply(&reply(7, MessageType::Offer), 7, MessageType::Offer).unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns_servers, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.lease_seconds, 86400);
    }

    #[test]
    fn other_transactions_and_types_are_ignored() {
        assert_eq!(
            parse_reply(&reply(7, MessageType::Offer), 8, MessageType::Offer),
            None
        );
        assert_eq!(
            parse_reply(&reply(7, MessageType::Nak), 7, MessageType::Ack),
            None
        );
        // Our own broadcast DISCOVER, looped back, is a request, not a reply.
        assert_eq!(
            parse_reply(&discover(7, [2, 0, 0, 0, 0, 1]), 7, MessageType::Offer),
            None
        );
    }

    #[test]
    fn requests_name_the_offered_address_and_server() {
        let offer = parse_reply(&reply(7, MessageType::Offer), 7, MessageType::Offer).unwrap();
        let bytes = request(7, [2, 0, 0, 0, 0, 1], &offer);
        let message = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(message.opts().msg_type(), Some(MessageType::Request));
        assert!(message.flags().broadcast());
    }

    #[test]
    fn arbitrary_datagrams_never_panic() {
        bolero::check!().with_type::<Vec<u8>>().for_each(|bytes| {
            let _ = parse_reply(bytes, 1, MessageType::Offer);
        });
    }
}
