//! The L2 segment of a local cluster: a UDP hub that QEMU's `-netdev socket,udp=` NICs
//! send their Ethernet frames to, and that repeats each frame to every other node.
//!
//! A relay of our own rather than a multicast socket, so that a test can pull a node's
//! cable: a node named in the cut file neither sends nor receives anything on the segment
//! (its API forward, on the user-mode NIC, still answers). The cut file is one node name
//! per line, read again whenever it changes.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One node's end of the segment: the UDP address its NIC sends from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The node's name.
    pub name: String,
    /// Where its QEMU NIC is bound (127.0.0.1:port).
    pub address: SocketAddr,
}

/// The segment's hub.
pub struct Relay {
    socket: UdpSocket,
    ports: Vec<Port>,
    cut_file: PathBuf,
    cut: BTreeSet<String>,
    cut_read_at: Option<SystemTime>,
}

impl Relay {
    /// Binds the hub at `listen` for `ports`; `cut_file` names the nodes cut off.
    pub fn bind(listen: SocketAddr, ports: Vec<Port>, cut_file: &Path) -> std::io::Result<Relay> {
        let socket = UdpSocket::bind(listen)?;
        // Wake up now and then to notice a changed cut file with no traffic.
        socket.set_read_timeout(Some(Duration::from_millis(250)))?;
        Ok(Relay {
            socket,
            ports,
            cut_file: cut_file.to_owned(),
            cut: BTreeSet::new(),
            cut_read_at: None,
        })
    }

    /// Repeats frames until the process ends.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut frame = vec![0u8; 65536];
        loop {
            self.reread_cut();
            let (length, from) = match self.socket.recv_from(&mut frame) {
                Ok(received) => received,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(error) => return Err(error),
            };
            for to in self.destinations(from) {
                // A node whose QEMU is stopped is not listening: that is a power cut, not
                // a relay failure.
                let _ = self.socket.send_to(&frame[..length], to);
            }
        }
    }

    /// Where a frame from `from` goes: every other node, unless either end is cut off.
    fn destinations(&self, from: SocketAddr) -> Vec<SocketAddr> {
        let Some(sender) = self.ports.iter().find(|port| port.address == from) else {
            return Vec::new();
        };
        if self.cut.contains(&sender.name) {
            return Vec::new();
        }
        self.ports
            .iter()
            .filter(|port| port.address != from && !self.cut.contains(&port.name))
            .map(|port| port.address)
            .collect()
    }

    fn reread_cut(&mut self) {
        let modified = std::fs::metadata(&self.cut_file)
            .and_then(|meta| meta.modified())
            .ok();
        if modified == self.cut_read_at {
            return;
        }
        self.cut_read_at = modified;
        self.cut = read_cut(&self.cut_file);
    }
}

/// The nodes the cut file names (none when it is missing).
pub fn read_cut(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, number: u16) -> Port {
        Port {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], number)),
        }
    }

    #[test]
    fn frames_reach_every_other_node_and_a_cut_node_is_silent_both_ways() {
        let directory = tempfile::tempdir().unwrap();
        let cut_file = directory.path().join("cut");
        let ports = vec![port("a", 40001), port("b", 40002), port("c", 40003)];
        let mut relay =
            Relay::bind("127.0.0.1:0".parse().unwrap(), ports.clone(), &cut_file).unwrap();
        relay.reread_cut();
        assert_eq!(
            relay.destinations(ports[0].address),
            [ports[1].address, ports[2].address]
        );
        assert!(
            relay
                .destinations("127.0.0.1:9".parse().unwrap())
                .is_empty(),
            "a stranger's frames go nowhere"
        );
        std::fs::write(&cut_file, "b\n").unwrap();
        relay.reread_cut();
        assert_eq!(relay.destinations(ports[0].address), [ports[2].address]);
        assert!(relay.destinations(ports[1].address).is_empty());
        std::fs::write(&cut_file, "").unwrap();
        relay.cut_read_at = None;
        relay.reread_cut();
        assert_eq!(relay.destinations(ports[1].address).len(), 2, "healed");
    }

    #[test]
    fn the_relay_repeats_real_datagrams() {
        let directory = tempfile::tempdir().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let ports = vec![
            Port {
                name: "a".into(),
                address: a.local_addr().unwrap(),
            },
            Port {
                name: "b".into(),
                address: b.local_addr().unwrap(),
            },
        ];
        let relay = Relay::bind(
            "127.0.0.1:0".parse().unwrap(),
            ports,
            &directory.path().join("cut"),
        )
        .unwrap();
        let hub = relay.socket.local_addr().unwrap();
        std::thread::spawn(move || relay.run());
        a.send_to(b"frame", hub).unwrap();
        let mut buffer = [0u8; 16];
        let (length, from) = b.recv_from(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"frame");
        assert_eq!(from, hub);
    }
}
