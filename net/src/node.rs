//! Node networking through rtnetlink: links up, MTU, static addresses and routes, DHCP
//! clients with renewal, and `/etc/resolv.conf`.
//!
//! [`apply`] puts a [`NetworkPlan`] in force. An empty plan means what every cloud image
//! does: DHCP on the first Ethernet interface. Each DHCP interface gets a long-lived
//! [`dhcp`] client task that renews its lease and takes the address away if it expires.
//! DNS servers from the config come first in `/run/keelson/resolv.conf` (which
//! `/etc/resolv.conf` points at), then those each DHCP lease offers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use keelson_config::plan::{format_mac, InterfacePlan, IpNet, Matcher, NetworkPlan, RoutePlan};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use crate::dhcp;

/// Where the resolver configuration is written (`/etc/resolv.conf` links here).
pub const RESOLV_CONF: &str = "/run/keelson/resolv.conf";

/// An Ethernet interface the node can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Kernel index.
    pub index: u32,
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Hardware address.
    pub mac: [u8; 6],
}

fn connect() -> anyhow::Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

fn interface_of(message: &LinkMessage) -> Option<Interface> {
    if message.header.link_layer_type != LinkLayerType::Ether {
        return None;
    }
    let mut name = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(text) => name = Some(text.clone()),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Interface {
        index: message.header.index,
        name: name?,
        mac: mac?,
    })
}

fn link_name(message: &LinkMessage) -> Option<&str> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.as_str()),
            _ => None,
        })
}

/// The DNS servers and search domains in force, from the config and from each lease.
#[derive(Debug, Default)]
struct Resolver {
    configured: Vec<IpAddr>,
    search: Vec<String>,
    from_dhcp: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl Resolver {
    fn text(&self) -> String {
        let mut servers: Vec<IpAddr> = self.configured.clone();
        for server in self.from_dhcp.values().flatten() {
            let server = IpAddr::V4(*server);
            if !servers.contains(&server) {
                servers.push(server);
            }
        }
        let mut text = String::from("# Written by keelsond from the machine config and DHCP.\n");
        for server in servers.iter().take(3) {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.search.is_empty() {
            text.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        text
    }

    fn write(&self) {
        let written = std::fs::create_dir_all("/run/keelson")
            .and_then(|()| std::fs::write(RESOLV_CONF, self.text()));
        if let Err(error) = written {
            tracing::warn!("cannot write {RESOLV_CONF}: {error}");
        }
    }
}

/// What [`apply`] did, line by line, for the log and the console.
#[derive(Debug, Default)]
pub struct Applied {
    /// One line per interface configured.
    pub lines: Vec<String>,
    /// Config entries that matched no interface.
    pub unmatched: Vec<String>,
    /// The DHCP client tasks started, so that a later plan can replace them.
    pub tasks: Vec<tokio::task::AbortHandle>,
}

/// Brings loopback up.
pub async fn loopback_up() -> anyhow::Result<()> {
    let handle = connect()?;
    let links = list_links(&handle).await?;
    for link in links.iter().filter(|link| link_name(link) == Some("lo")) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(link.header.index).up().build())
            .execute()
            .await
            .context("bringing lo up")?;
    }
    Ok(())
}

/// The plan used when the config says nothing: DHCP on the first Ethernet interface.
fn default_interfaces(interfaces: &[Interface]) -> Vec<InterfacePlan> {
    interfaces
        .iter()
        .min_by_key(|interface| interface.index)
        .map(|first| InterfacePlan {
            matcher: Matcher {
                name: Some(first.name.clone()),
                mac: None,
            },
            dhcp: true,
            addresses: Vec::new(),
            routes: Vec::new(),
            mtu: None,
        })
        .into_iter()
        .collect()
}

/// Puts `plan` in force. DHCP interfaces get up to `first_lease` for their first lease
/// (their clients keep running in the background either way).
pub async fn apply(plan: &NetworkPlan, first_lease: Duration) -> anyhow::Result<Applied> {
    let handle = connect()?;
    let links = list_links(&handle).await.context("listing links")?;
    let mut interfaces: Vec<Interface> = links.iter().filter_map(interface_of).collect();
    interfaces.sort_by_key(|interface| interface.index);
    let wanted = if plan.interfaces.is_empty() {
        default_interfaces(&interfaces)
    } else {
        plan.interfaces.clone()
    };
    let resolver = Arc::new(Mutex::new(Resolver {
        configured: plan.nameservers.clone(),
        search: plan.search_domains.clone(),
        from_dhcp: BTreeMap::new(),
    }));
    if let Ok(resolver) = resolver.lock() {
        resolver.write();
    }
    let mut applied = Applied::default();
    let mut waiting = Vec::new();
    for entry in &wanted {
        let matched: Vec<&Interface> = interfaces
            .iter()
            .filter(|interface| entry.matcher.matches(&interface.name, &interface.mac))
            .collect();
        if matched.is_empty() {
            applied.unmatched.push(entry.matcher.to_string());
            continue;
        }
        for interface in matched {
            configure_static(&handle, interface, entry).await?;
            let mut line = format!("{} ({})", interface.name, format_mac(&interface.mac));
            for address in &entry.addresses {
                line.push_str(&format!(" {address}"));
            }
            if let Some(mtu) = entry.mtu {
                line.push_str(&format!(" mtu {mtu}"));
            }
            if entry.dhcp {
                line.push_str(" dhcp");
                let (leased, task) = start_dhcp(&handle, interface, resolver.clone());
                waiting.push((interface.name.clone(), leased));
                applied.tasks.push(task);
            }
            applied.lines.push(line);
        }
    }
    // Wait for the first lease of every DHCP interface, together.
    let deadline = tokio::time::Instant::now() + first_lease;
    for (name, mut leased) in waiting {
        let got = tokio::time::timeout_at(deadline, leased.wait_for(|lease| lease.is_some())).await;
        match got {
            Ok(Ok(lease)) => {
                if let Some(lease) = lease.as_ref() {
                    applied.lines.push(format!("{name}: {}", describe(lease)));
                }
            }
            _ => applied.lines.push(format!(
                "{name}: no DHCP lease yet after {} s; still asking",
                first_lease.as_secs()
            )),
        }
    }
    Ok(applied)
}

fn describe(lease: &dhcp::Lease) -> String {
    format!(
        "{}/{} from DHCP server {} (router {}, lease {} s, renew at {} s)",
        lease.address,
        lease.prefix_len,
        lease.server,
        lease
            .router
            .map(|router| router.to_string())
            .unwrap_or_else(|| "none".into()),
        lease.lease_seconds,
        lease.renewal_seconds
    )
}

async fn configure_static(
    handle: &Handle,
    interface: &Interface,
    entry: &InterfacePlan,
) -> anyhow::Result<()> {
    let mut link = LinkUnspec::new_with_index(interface.index).up();
    if let Some(mtu) = entry.mtu {
        link = link.mtu(mtu);
    }
    handle
        .link()
        .set(link.build())
        .execute()
        .await
        .with_context(|| format!("bringing {} up", interface.name))?;
    for address in &entry.addresses {
        add_address(handle, interface, *address).await?;
    }
    for route in &entry.routes {
        add_route(handle, interface, route).await?;
    }
    Ok(())
}

/// True for netlink's "File exists": the address or route is already there (an agent
/// restart re-applies the same plan).
fn already_there(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(message)
        if message.code.map(|code| code.get()) == Some(-libc::EEXIST))
}

async fn add_address(handle: &Handle, interface: &Interface, address: IpNet) -> anyhow::Result<()> {
    match handle
        .address()
        .add(interface.index, address.address, address.prefix)
        .execute()
        .await
    {
        Err(error) if !already_there(&error) => {
            Err(error).with_context(|| format!("adding {address} to {}", interface.name))
        }
        _ => Ok(()),
    }
}

fn route_message(interface: &Interface, route: &RoutePlan) -> anyhow::Result<RouteMessage> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.destination.address, route.destination.prefix)?
        .output_interface(interface.index);
    match route.via {
        Some(via) => builder = builder.gateway(via)?,
        None => builder = builder.scope(RouteScope::Link),
    }
    if let Some(metric) = route.metric {
        builder = builder.priority(metric);
    }
    Ok(builder.build())
}

async fn add_route(
    handle: &Handle,
    interface: &Interface,
    route: &RoutePlan,
) -> anyhow::Result<()> {
    let message = route_message(interface, route)?;
    match handle.route().add(message).execute().await {
        Err(error) if !already_there(&error) => Err(error).with_context(|| {
            format!(
                "adding the route to {} via {} on {}",
                route.destination,
                route
                    .via
                    .map(|via| via.to_string())
                    .unwrap_or_else(|| "the link".into()),
                interface.name
            )
        }),
        _ => Ok(()),
    }
}

fn lease_routes(lease: &dhcp::Lease) -> Vec<RoutePlan> {
    lease
        .router
        .map(|router| RoutePlan {
            destination: IpNet {
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            },
            via: Some(IpAddr::V4(router)),
            metric: Some(1024),
        })
        .into_iter()
        .collect()
}

/// Starts the DHCP client of `interface`; returns a receiver that sees its lease, and the
/// task's handle.
fn start_dhcp(
    handle: &Handle,
    interface: &Interface,
    resolver: Arc<Mutex<Resolver>>,
) -> (
    tokio::sync::watch::Receiver<Option<dhcp::Lease>>,
    tokio::task::AbortHandle,
) {
    let (leases, leased) = tokio::sync::watch::channel(None);
    let handle = handle.clone();
    let interface = interface.clone();
    let task = tokio::spawn(async move {
        let perform = |action: dhcp::Action| {
            let handle = handle.clone();
            let interface = interface.clone();
            let resolver = resolver.clone();
            let leases = leases.clone();
            async move {
                if let Err(error) =
                    perform_lease_action(&handle, &interface, &resolver, &action).await
                {
                    tracing::warn!("dhcp {}: {error:#}", interface.name);
                }
                match action {
                    dhcp::Action::Apply(lease) => {
                        let _ = leases.send(Some(lease));
                    }
                    dhcp::Action::Remove(_) => {
                        let _ = leases.send(None);
                    }
                    dhcp::Action::Send(..) => {}
                }
            }
        };
        let name = interface.name.clone();
        if let Err(error) = crate::dhcp_socket::run(name.clone(), interface.mac, perform).await {
            tracing::warn!("dhcp {name}: client stopped: {error:#}");
        }
    });
    (leased, task.abort_handle())
}

async fn perform_lease_action(
    handle: &Handle,
    interface: &Interface,
    resolver: &Mutex<Resolver>,
    action: &dhcp::Action,
) -> anyhow::Result<()> {
    match action {
        dhcp::Action::Apply(lease) => {
            let address = IpNet {
                address: IpAddr::V4(lease.address),
                prefix: lease.prefix_len,
            };
            add_address(handle, interface, address).await?;
            for route in lease_routes(lease) {
                add_route(handle, interface, &route).await?;
            }
            if let Ok(mut resolver) = resolver.lock() {
                resolver
                    .from_dhcp
                    .insert(interface.name.clone(), lease.dns_servers.clone());
                resolver.write();
            }
            tracing::info!("dhcp {}: {}", interface.name, describe(lease));
        }
        dhcp::Action::Remove(lease) => {
            tracing::warn!(
                "dhcp {}: lease on {} ended; removing the address",
                interface.name,
                lease.address
            );
            for route in lease_routes(lease) {
                let _ = handle
                    .route()
                    .del(route_message(interface, &route)?)
                    .execute()
                    .await;
            }
            let addresses: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(interface.index)
                .execute()
                .try_collect()
                .await?;
            for message in addresses {
                let matches = message.attributes.iter().any(|attribute| {
                    matches!(attribute, AddressAttribute::Address(address)
                        if *address == IpAddr::V4(lease.address))
                });
                if matches {
                    handle.address().del(message).execute().await?;
                }
            }
            if let Ok(mut resolver) = resolver.lock() {
                resolver.from_dhcp.remove(&interface.name);
                resolver.write();
            }
        }
        dhcp::Action::Send(..) => {}
    }
    Ok(())
}

/// Every IPv4 and IPv6 address in force, as (interface, CIDR).
pub async fn addresses() -> Vec<(String, String)> {
    let Ok(handle) = connect() else {
        return Vec::new();
    };
    let names = link_names(&handle).await;
    let Ok(messages) = handle
        .address()
        .get()
        .execute()
        .try_collect::<Vec<_>>()
        .await
    else {
        return Vec::new();
    };
    messages
        .iter()
        .filter_map(|message| {
            let address = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(address) => Some(*address),
                _ => None,
            })?;
            Some((
                name_of(&names, message.header.index),
                format!("{address}/{}", message.header.prefix_len),
            ))
        })
        .collect()
}

async fn list_links(handle: &Handle) -> Result<Vec<LinkMessage>, rtnetlink::Error> {
    handle.link().get().execute().try_collect().await
}

async fn link_names(handle: &Handle) -> BTreeMap<u32, String> {
    let links = list_links(handle).await.unwrap_or_default();
    links
        .iter()
        .filter_map(|link| Some((link.header.index, link_name(link)?.to_owned())))
        .collect()
}

fn name_of(names: &BTreeMap<u32, String>, index: u32) -> String {
    names
        .get(&index)
        .cloned()
        .unwrap_or_else(|| index.to_string())
}

/// A route in force in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInForce {
    /// `0.0.0.0/0` for the default route.
    pub destination: String,
    /// Next hop, empty when on-link.
    pub gateway: String,
    /// Output interface name.
    pub interface: String,
    /// Priority.
    pub metric: u32,
}

/// The main table's IPv4 and IPv6 unicast routes.
pub async fn routes() -> Vec<RouteInForce> {
    let Ok(handle) = connect() else {
        return Vec::new();
    };
    let names = link_names(&handle).await;
    let mut found = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let request = match version {
            IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let Ok(messages) = handle
            .route()
            .get(request)
            .execute()
            .try_collect::<Vec<RouteMessage>>()
            .await
        else {
            continue;
        };
        for message in messages {
            if message.header.table != RouteMessage::default().header.table
                && message.header.table != 254
            {
                continue;
            }
            let mut destination = None;
            let mut gateway = String::new();
            let mut interface = String::new();
            let mut metric = 0;
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Destination(address) => destination = route_ip(address),
                    RouteAttribute::Gateway(address) => {
                        gateway = route_ip(address)
                            .map(|ip| ip.to_string())
                            .unwrap_or_default()
                    }
                    RouteAttribute::Oif(index) => interface = name_of(&names, *index),
                    RouteAttribute::Priority(priority) => metric = *priority,
                    _ => {}
                }
            }
            let destination = match destination {
                Some(address) => format!("{address}/{}", message.header.destination_prefix_length),
                None if matches!(version, IpVersion::V4) => "0.0.0.0/0".to_owned(),
                None => "::/0".to_owned(),
            };
            found.push(RouteInForce {
                destination,
                gateway,
                interface,
                metric,
            });
        }
    }
    found
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The node's IP as the kubelet reports it (`status.hostIP`): the first address on the
/// interface of the default route with the lowest metric, IPv4 before IPv6; with no
/// default route, the first address that is not loopback or link-local.
pub fn node_ip(routes: &[RouteInForce], addresses: &[(String, String)]) -> Option<IpAddr> {
    let usable = |(interface, cidr): &(String, String)| {
        let ip: IpAddr = cidr.split('/').next()?.parse().ok()?;
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        };
        (!ip.is_loopback() && !link_local).then(|| (interface.clone(), ip))
    };
    let candidates: Vec<(String, IpAddr)> = addresses.iter().filter_map(usable).collect();
    let first_on = |interface: Option<&str>, v4: bool| {
        candidates
            .iter()
            .filter(|(name, ip)| {
                interface.is_none_or(|wanted| name == wanted) && ip.is_ipv4() == v4
            })
            .map(|(_, ip)| *ip)
            .next()
    };
    let mut defaults: Vec<&RouteInForce> = routes
        .iter()
        .filter(|route| route.destination == "0.0.0.0/0" || route.destination == "::/0")
        .collect();
    defaults.sort_by_key(|route| (route.destination != "0.0.0.0/0", route.metric));
    defaults
        .iter()
        .find_map(|route| {
            first_on(Some(&route.interface), true).or(first_on(Some(&route.interface), false))
        })
        .or(first_on(None, true))
        .or(first_on(None, false))
}

/// [`node_ip`] of the routes and addresses in force.
pub async fn node_ip_in_force() -> Option<IpAddr> {
    node_ip(&routes().await, &addresses().await)
}

/// The DNS servers and search domains in `/run/keelson/resolv.conf`.
pub fn resolver_in_force() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    parse_resolv_conf(&text)
}

/// Reads `nameserver` and `search` lines.
pub fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
            Some("search") => search.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (servers, search)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, interface: &str, metric: u32) -> RouteInForce {
        RouteInForce {
            destination: destination.into(),
            gateway: String::new(),
            interface: interface.into(),
            metric,
        }
    }

    fn addresses(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(interface, cidr)| (interface.to_string(), cidr.to_string()))
            .collect()
    }

    #[test]
    fn the_node_ip_is_on_the_default_routes_interface() {
        let in_force = addresses(&[
            ("lo", "127.0.0.1/8"),
            ("eth0", "fe80::1/64"),
            ("eth0", "192.168.1.5/24"),
            ("eth1", "10.0.2.15/24"),
            ("eth1", "2001:db8::15/64"),
        ]);
        let routes = [
            route("10.0.2.0/24", "eth1", 0),
            route("0.0.0.0/0", "eth0", 200),
            route("0.0.0.0/0", "eth1", 100),
        ];
        assert_eq!(
            node_ip(&routes, &in_force),
            Some("10.0.2.15".parse().unwrap())
        );
        // IPv6 only on the default route's link: its global address, not the link-local one.
        let routes = [route("::/0", "eth0", 100)];
        let v6_only = addresses(&[("eth0", "fe80::1/64"), ("eth0", "2001:db8::5/64")]);
        assert_eq!(
            node_ip(&routes, &v6_only),
            Some("2001:db8::5".parse().unwrap())
        );
        // No default route: the first usable address; loopback alone gives none.
        assert_eq!(
            node_ip(&[], &in_force),
            Some("192.168.1.5".parse().unwrap())
        );
        assert_eq!(node_ip(&[], &addresses(&[("lo", "127.0.0.1/8")])), None);
    }

    #[test]
    fn configured_servers_come_before_leased_ones_without_duplicates() {
        let mut resolver = Resolver {
            configured: vec!["1.1.1.1".parse().unwrap()],
            search: vec!["example.test".into()],
            from_dhcp: BTreeMap::new(),
        };
        resolver.from_dhcp.insert(
            "eth0".into(),
            vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
        );
        let (servers, search) = parse_resolv_conf(&resolver.text());
        assert_eq!(servers, ["1.1.1.1", "10.0.2.3"]);
        assert_eq!(search, ["example.test"]);
    }

    #[test]
    fn without_a_config_the_first_interface_takes_dhcp() {
        let interfaces = [
            Interface {
                index: 3,
                name: "eth1".into(),
                mac: [2, 0, 0, 0, 0, 2],
            },
            Interface {
                index: 2,
                name: "eth0".into(),
                mac: [2, 0, 0, 0, 0, 1],
            },
        ];
        let plan = default_interfaces(&interfaces);
        assert_eq!(plan.len(), 1);
        assert!(plan[0].dhcp);
        assert!(plan[0].matcher.matches("eth0", &[2, 0, 0, 0, 0, 1]));
    }
}
