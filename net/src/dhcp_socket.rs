//! The DHCP client's shell: a UDP socket bound to the interface, a timer, and the lease
//! actions handed to a callback. The decisions are [`crate::dhcp::Client`]'s.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::dhcp::{parse_reply, Action, Client, Destination, Event};

/// Runs the client on `interface` for as long as the task lives. `perform` puts leases in
/// force and takes them away (it is called for [`Action::Apply`] and [`Action::Remove`]).
pub async fn run<F, Fut>(interface: String, mac: [u8; 6], mut perform: F) -> anyhow::Result<()>
where
    F: FnMut(Action) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let socket = client_socket(&interface)?;
    let started = tokio::time::Instant::now();
    let now = || started.elapsed();
    let seed = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ std::process::id();
    let (mut client, mut actions) = Client::start(mac, seed, now());
    let mut buffer = vec![0u8; 1500];
    loop {
        for action in actions.drain(..) {
            match action {
                Action::Send(bytes, destination) => {
                    let to = match destination {
                        Destination::Broadcast => SocketAddr::from((Ipv4Addr::BROADCAST, 67)),
                        Destination::Server(server) => SocketAddr::from((server, 67)),
                    };
                    if let Err(error) = socket.send_to(&bytes, to).await {
                        tracing::warn!("dhcp {interface}: cannot send to {to}: {error}");
                    }
                }
                other => perform(other).await,
            }
        }
        let deadline = started + client.deadline();
        let event = tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok((length, _)) => match buffer.get(..length).and_then(|b| parse_reply(b, client.xid())) {
                    Some(reply) => Event::Reply(reply),
                    None => continue,
                },
                Err(error) => {
                    tracing::warn!("dhcp {interface}: receive failed: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ = tokio::time::sleep_until(deadline) => Event::Timer,
        };
        actions = client.handle(event, now());
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
