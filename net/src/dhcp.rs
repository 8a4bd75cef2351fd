//! A DHCPv4 client (RFC 2131) with renewal, rebinding and lease expiry.
//!
//! [`Client`] is the pure state machine: it takes an [`Event`] (a reply or the passing of
//! time, given as an argument) and returns the [`Action`]s to perform. Message building and
//! reply parsing are pure too. `crate::dhcp_socket::run` is the thin shell: a UDP socket
//! bound to the interface, a timer, and netlink calls through a callback.
//!
//! Requests set the broadcast flag, so that servers answer to 255.255.255.255, which a
//! socket bound to the interface receives before the interface has an address.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use keelson_supervise::backoff::Backoff;

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
    /// Renewal time (T1) in seconds; half the lease unless the server says.
    pub renewal_seconds: u32,
    /// Rebinding time (T2) in seconds; 7/8 of the lease unless the server says.
    pub rebinding_seconds: u32,
    /// The server that made the offer.
    pub server: Ipv4Addr,
}

/// A server's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER.
    Offer(Lease),
    /// DHCPACK.
    Ack(Lease),
    /// DHCPNAK: the address may not be used.
    Nak,
}

/// How a request goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To 255.255.255.255:67.
    Broadcast,
    /// To the server that gave the lease (renewing).
    Server(Ipv4Addr),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a datagram.
    Send(Vec<u8>, Destination),
    /// Put the lease's address, route and DNS servers in force (again, when renewed).
    Apply(Lease),
    /// Take the lease's address and route away: it expired or was refused.
    Remove(Lease),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The deadline given by [`Client::deadline`] passed.
    Timer,
    /// A reply for our transaction arrived.
    Reply(Reply),
}

/// Where the client is in RFC 2131's state diagram. Times are offsets from the client's
/// start, as the shell measures them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Broadcasting DISCOVER.
    Selecting {
        /// Retransmissions so far.
        attempt: u32,
    },
    /// Asking for an offered lease.
    Requesting {
        /// The offer.
        offer: Lease,
        /// Retransmissions so far.
        attempt: u32,
    },
    /// Holding a lease.
    Bound {
        /// The lease.
        lease: Lease,
        /// When it was acknowledged.
        since: Duration,
    },
    /// Past T1: asking the server that gave the lease to extend it.
    Renewing {
        /// The lease.
        lease: Lease,
        /// When it was acknowledged.
        since: Duration,
    },
    /// Past T2: asking any server to extend it.
    Rebinding {
        /// The lease.
        lease: Lease,
        /// When it was acknowledged.
        since: Duration,
    },
}

/// Retransmission backoff while selecting and requesting: 4, 8, 16, 32, then 64 s
/// (RFC 2131 4.1).
const RETRANSMIT: Backoff = Backoff::new(
    Duration::from_secs(4),
    Duration::from_secs(64),
    Duration::MAX,
);

fn backoff(attempt: u32) -> Duration {
    RETRANSMIT.delay_for_attempt(attempt)
}

/// While renewing or rebinding, retry at half the time left, but not more often than
/// every 60 s (RFC 2131 4.4.5) unless less than that is left.
fn retry_before(now: Duration, limit: Duration) -> Duration {
    let left = limit.saturating_sub(now);
    now + (left / 2).max(Duration::from_secs(60)).min(left)
}

/// The DHCP client state machine for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    mac: [u8; 6],
    xid: u32,
    state: State,
    deadline: Duration,
}

impl Client {
    /// A client for the interface with hardware address `mac`, starting at `now`. Returns
    /// the client and its first actions (a DISCOVER).
    pub fn start(mac: [u8; 6], xid: u32, now: Duration) -> (Client, Vec<Action>) {
        let client = Client {
            mac,
            xid,
            state: State::Selecting { attempt: 0 },
            deadline: now + backoff(0),
        };
        let discover = Action::Send(discover(xid, mac), Destination::Broadcast);
        (client, vec![discover])
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The transaction id replies must carry.
    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// When the shell must deliver [`Event::Timer`] if nothing else happens.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The lease in force, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease, .. }
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// Advances the machine. Replies that do not fit the state are ignored.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let state = self.state.clone();
        match (state, event) {
            (State::Selecting { attempt }, Event::Timer) => {
                self.state = State::Selecting {
                    attempt: attempt + 1,
                };
                self.deadline = now + backoff(attempt + 1);
                vec![self.send_discover()]
            }
            (State::Selecting { .. }, Event::Reply(Reply::Offer(offer))) => {
                self.state = State::Requesting {
                    offer: offer.clone(),
                    attempt: 0,
                };
                self.deadline = now + backoff(0);
                vec![Action::Send(
                    request(self.xid, self.mac, &offer),
                    Destination::Broadcast,
                )]
            }
            (State::Requesting { offer, attempt }, Event::Timer) => {
                if attempt >= 3 {
                    return self.restart(now, None);
                }
                self.state = State::Requesting {
                    offer: offer.clone(),
                    attempt: attempt + 1,
                };
                self.deadline = now + backoff(attempt + 1);
                vec![Action::Send(
                    request(self.xid, self.mac, &offer),
                    Destination::Broadcast,
                )]
            }
            (State::Requesting { .. }, Event::Reply(Reply::Nak)) => self.restart(now, None),
            (
                State::Requesting { .. } | State::Renewing { .. } | State::Rebinding { .. },
                Event::Reply(Reply::Ack(lease)),
            ) => self.bind(lease, now),
            (
                State::Renewing { lease, .. } | State::Rebinding { lease, .. },
                Event::Reply(Reply::Nak),
            ) => self.restart(now, Some(lease)),
            (State::Bound { lease, since }, Event::Timer) => {
                self.state = State::Renewing {
                    lease: lease.clone(),
                    since,
                };
                let rebind_at = since + secs(lease.rebinding_seconds);
                self.deadline = retry_before(now, rebind_at);
                vec![Action::Send(
                    renew(self.xid, self.mac, lease.address, false),
                    Destination::Server(lease.server),
                )]
            }
            (State::Renewing { lease, since }, Event::Timer) => {
                let rebind_at = since + secs(lease.rebinding_seconds);
                if now < rebind_at {
                    self.deadline = retry_before(now, rebind_at);
                    return vec![Action::Send(
                        renew(self.xid, self.mac, lease.address, false),
                        Destination::Server(lease.server),
                    )];
                }
                self.state = State::Rebinding {
                    lease: lease.clone(),
                    since,
                };
                self.deadline = retry_before(now, since + secs(lease.lease_seconds));
                vec![Action::Send(
                    renew(self.xid, self.mac, lease.address, true),
                    Destination::Broadcast,
                )]
            }
            (State::Rebinding { lease, since }, Event::Timer) => {
                let expires_at = since + secs(lease.lease_seconds);
                if now < expires_at {
                    self.deadline = retry_before(now, expires_at);
                    return vec![Action::Send(
                        renew(self.xid, self.mac, lease.address, true),
                        Destination::Broadcast,
                    )];
                }
                self.restart(now, Some(lease))
            }
            // Late or duplicate replies, and offers after the first: ignored.
            (_, Event::Reply(_)) => Vec::new(),
        }
    }

    fn bind(&mut self, lease: Lease, now: Duration) -> Vec<Action> {
        self.deadline = now + secs(lease.renewal_seconds);
        self.state = State::Bound {
            lease: lease.clone(),
            since: now,
        };
        vec![Action::Apply(lease)]
    }

    /// Back to DISCOVER with a new transaction, dropping `lost` if there was a lease.
    fn restart(&mut self, now: Duration, lost: Option<Lease>) -> Vec<Action> {
        self.xid = self.xid.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        self.state = State::Selecting { attempt: 0 };
        self.deadline = now + backoff(0);
        let mut actions: Vec<Action> = lost.into_iter().map(Action::Remove).collect();
        actions.push(self.send_discover());
        actions
    }

    fn send_discover(&self) -> Action {
        Action::Send(discover(self.xid, self.mac), Destination::Broadcast)
    }
}

fn secs(seconds: u32) -> Duration {
    Duration::from_secs(u64::from(seconds))
}

fn base_message(xid: u32, mac: [u8; 6], kind: MessageType, broadcast: bool) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = Message::new_with_id(
        xid,
        unspecified,
        unspecified,
        unspecified,
        unspecified,
        &mac,
    );
    if broadcast {
        message.set_flags(Flags::default().set_broadcast());
    }
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(kind));
    options.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
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
    encode(&base_message(xid, mac, MessageType::Discover, true))
}

/// A DHCPREQUEST for an offered lease (SELECTING state).
pub fn request(xid: u32, mac: [u8; 6], offer: &Lease) -> Vec<u8> {
    let mut message = base_message(xid, mac, MessageType::Request, true);
    message
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.address));
    message
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(offer.server));
    encode(&message)
}

/// A DHCPREQUEST extending the lease on `address` (RENEWING or REBINDING state): `ciaddr`
/// carries the address, and neither the requested address nor the server is named.
pub fn renew(xid: u32, mac: [u8; 6], address: Ipv4Addr, broadcast: bool) -> Vec<u8> {
    let mut message = base_message(xid, mac, MessageType::Request, broadcast);
    message.set_ciaddr(address);
    encode(&message)
}

/// Parses a server's reply for transaction `xid`; `None` for anything else.
pub fn parse_reply(bytes: &[u8], xid: u32) -> Option<Reply> {
    let message = Message::decode(&mut Decoder::new(bytes)).ok()?;
    if message.xid() != xid || message.opcode() != v4::Opcode::BootReply {
        return None;
    }
    let options = message.opts();
    let kind = options.msg_type()?;
    if kind == MessageType::Nak {
        return Some(Reply::Nak);
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
        Some(DhcpOption::AddressLeaseTime(seconds)) => (*seconds).max(10),
        _ => 3600,
    };
    let renewal_seconds = match options.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(seconds)) if *seconds < lease_seconds => *seconds,
        _ => lease_seconds / 2,
    };
    let rebinding_seconds = match options.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(seconds))
            if *seconds > renewal_seconds && *seconds < lease_seconds =>
        {
            *seconds
        }
        _ => (u64::from(lease_seconds) * 7 / 8) as u32,
    }
    .max(renewal_seconds);
    let server = match options.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(server)) => *server,
        _ => message.siaddr(),
    };
    let address = message.yiaddr();
    if address.is_unspecified() {
        return None;
    }
    let lease = Lease {
        address,
        prefix_len: u32::from(mask).count_ones() as u8,
        router,
        dns_servers,
        lease_seconds,
        renewal_seconds,
        rebinding_seconds,
        server,
    };
    match kind {
        MessageType::Offer => Some(Reply::Offer(lease)),
        MessageType::Ack => Some(Reply::Ack(lease)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn lease(seconds: u32) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
            lease_seconds: seconds,
            renewal_seconds: seconds / 2,
            rebinding_seconds: seconds * 7 / 8,
            server: Ipv4Addr::new(10, 0, 2, 2),
        }
    }

    fn reply(xid: u32, kind: MessageType) -> Vec<u8> {
        let mut message = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &MAC,
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

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_offer_becomes_a_lease() {
        let Some(Reply::Offer(lease)) = parse_reply(&reply(7, MessageType::Offer), 7) else {
            panic!("not an offer");
        };
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns_servers, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(
            (
                lease.lease_seconds,
                lease.renewal_seconds,
                lease.rebinding_seconds
            ),
            (86400, 43200, 75600)
        );
    }

    #[test]
    fn other_transactions_and_our_own_requests_are_ignored() {
        assert_eq!(parse_reply(&reply(7, MessageType::Offer), 8), None);
        assert_eq!(
            parse_reply(&reply(7, MessageType::Nak), 7),
            Some(Reply::Nak)
        );
        // Our own broadcast DISCOVER, looped back, is a request, not a reply.
        assert_eq!(parse_reply(&discover(7, MAC), 7), None);
    }

    #[test]
    fn renewals_carry_our_address_and_name_no_server() {
        let bytes = renew(7, MAC, Ipv4Addr::new(10, 0, 2, 15), false);
        let message = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(message.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(message.ciaddr(), Ipv4Addr::new(10, 0, 2, 15));
        assert!(message.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(!message.flags().broadcast());
    }

    fn bound_client(seconds: u32) -> Client {
        let (mut client, _) = Client::start(MAC, 1, secs(0));
        client.handle(Event::Reply(Reply::Offer(lease(seconds))), secs(1));
        let actions = client.handle(Event::Reply(Reply::Ack(lease(seconds))), secs(2));
        assert_eq!(actions, [Action::Apply(lease(seconds))]);
        client
    }

    #[test]
    fn a_lease_is_renewed_with_the_server_at_t1() {
        let mut client = bound_client(1000);
        assert_eq!(client.deadline(), secs(502));
        let actions = client.handle(Event::Timer, secs(502));
        assert!(matches!(
            actions.as_slice(),
            [Action::Send(_, Destination::Server(server))] if *server == Ipv4Addr::new(10, 0, 2, 2)
        ));
        assert!(matches!(client.state(), State::Renewing { .. }));
        // The server answers: bound again, next renewal half a lease later.
        let actions = client.handle(Event::Reply(Reply::Ack(lease(1000))), secs(510));
        assert_eq!(actions, [Action::Apply(lease(1000))]);
        assert_eq!(client.deadline(), secs(1010));
    }

    #[test]
    fn a_silent_server_leads_to_rebinding_then_expiry() {
        let mut client = bound_client(1000);
        let mut now = client.deadline();
        let mut broadcasts = 0;
        loop {
            let actions = client.handle(Event::Timer, now);
            if actions
                .iter()
                .any(|action| matches!(action, Action::Remove(_)))
            {
                break;
            }
            if matches!(client.state(), State::Rebinding { .. }) {
                broadcasts += 1;
                assert!(matches!(
                    actions.as_slice(),
                    [Action::Send(_, Destination::Broadcast)]
                ));
            }
            assert!(client.deadline() > now, "the deadline must move forward");
            now = client.deadline();
        }
        assert!(broadcasts >= 1);
        // The lease was acknowledged at 2 s and lasts 1000 s.
        assert_eq!(now, secs(1002));
        assert!(matches!(client.state(), State::Selecting { attempt: 0 }));
        assert!(client.lease().is_none());
    }

    #[test]
    fn a_nak_while_renewing_drops_the_lease() {
        let mut client = bound_client(1000);
        client.handle(Event::Timer, secs(502));
        let actions = client.handle(Event::Reply(Reply::Nak), secs(503));
        assert_eq!(actions[0], Action::Remove(lease(1000)));
        assert!(matches!(
            actions[1],
            Action::Send(_, Destination::Broadcast)
        ));
    }

    #[test]
    fn discovery_backs_off_to_64_seconds() {
        let (mut client, _) = Client::start(MAC, 1, secs(0));
        let mut now = secs(0);
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let next = client.deadline();
            gaps.push((next - now).as_secs());
            now = next;
            client.handle(Event::Timer, now);
        }
        assert_eq!(gaps, [4, 8, 16, 32, 64, 64]);
    }

    #[test]
    fn arbitrary_datagrams_never_panic() {
        bolero::check!().with_type::<Vec<u8>>().for_each(|bytes| {
            let _ = parse_reply(bytes, 1);
        });
    }

    #[test]
    fn after_any_timer_the_deadline_is_not_behind() {
        bolero::check!()
            .with_type::<Vec<(u8, u16)>>()
            .for_each(|steps| {
                let (mut client, _) = Client::start(MAC, 1, secs(0));
                let mut now = secs(0);
                for (kind, delay) in steps {
                    now += Duration::from_millis(u64::from(*delay));
                    let event = match kind % 4 {
                        0 => Event::Timer,
                        1 => Event::Reply(Reply::Offer(lease(60 + u32::from(*delay % 500)))),
                        2 => Event::Reply(Reply::Ack(lease(60 + u32::from(*delay % 500)))),
                        _ => Event::Reply(Reply::Nak),
                    };
                    let timer = matches!(event, Event::Timer);
                    if timer {
                        now = now.max(client.deadline());
                    }
                    client.handle(event, now);
                    // A reply may arrive after a deadline passed (the timer then fires at
                    // once); after the timer itself the next deadline is never behind.
                    if timer {
                        assert!(
                            client.deadline() >= now,
                            "the deadline fell behind the clock"
                        );
                    }
                }
            });
    }
}
