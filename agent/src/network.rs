//! Node networking through rtnetlink: loopback, the first Ethernet interface, DHCP.
//!
//! Without a machine config (that comes with the configuration issue) the node does what
//! every cloud image does: DHCP on the first Ethernet interface, a default route through
//! the offered router, and `/run/keelson/resolv.conf` (which `/etc/resolv.conf` points at)
//! from the offered DNS servers.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::dhcp;

/// Where the resolver configuration is written (`/etc` is read-only).
pub const RESOLV_CONF: &str = "/run/keelson/resolv.conf";

/// An interface the node can use.
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

/// Brings up loopback and configures the first Ethernet interface by DHCP; returns a
/// one-line summary.
pub async fn configure_default(timeout: Duration) -> anyhow::Result<String> {
    let handle = connect()?;
    tracing::info!("network: listing links");
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing links")?;
    for link in &links {
        let is_loopback = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "lo"));
        if is_loopback {
            handle
                .link()
                .set(LinkUnspec::new_with_index(link.header.index).up().build())
                .execute()
                .await
                .context("bringing lo up")?;
        }
    }
    let mut interfaces: Vec<Interface> = links.iter().filter_map(interface_of).collect();
    interfaces.sort_by_key(|interface| interface.index);
    let interface = interfaces
        .into_iter()
        .next()
        .context("no Ethernet interface found")?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(interface.index).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing {} up", interface.name))?;

    tracing::info!("network: {} is up; asking for a DHCP lease", interface.name);
    let lease = dhcp::acquire(&interface.name, interface.mac, timeout).await?;
    apply_lease(&handle, &interface, &lease).await?;
    Ok(format!(
        "{} has {}/{} from DHCP server {} (router {}, lease {} s)",
        interface.name,
        lease.address,
        lease.prefix_len,
        lease.server,
        lease
            .router
            .map(|router| router.to_string())
            .unwrap_or_else(|| "none".into()),
        lease.lease_seconds
    ))
}

async fn apply_lease(
    handle: &Handle,
    interface: &Interface,
    lease: &dhcp::Lease,
) -> anyhow::Result<()> {
    let added = handle
        .address()
        .add(interface.index, IpAddr::V4(lease.address), lease.prefix_len)
        .execute()
        .await;
    if let Err(error) = added {
        // Applying the same lease twice (an agent restart) finds the address already there.
        if !error.to_string().contains("File exists") {
            return Err(error).with_context(|| {
                format!(
                    "adding {}/{} to {}",
                    lease.address, lease.prefix_len, interface.name
                )
            });
        }
    }
    if let Some(router) = lease.router {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(router)
            .output_interface(interface.index)
            .build();
        if let Err(error) = handle.route().add(route).execute().await {
            if !error.to_string().contains("File exists") {
                return Err(error)
                    .with_context(|| format!("adding the default route via {router}"));
            }
        }
    }
    let resolv: String = lease
        .dns_servers
        .iter()
        .map(|server| format!("nameserver {server}\n"))
        .collect();
    std::fs::create_dir_all("/run/keelson").context("creating /run/keelson")?;
    std::fs::write(RESOLV_CONF, resolv).with_context(|| format!("writing {RESOLV_CONF}"))?;
    Ok(())
}

/// Every IPv4 and IPv6 address in force, as (interface, CIDR).
pub async fn addresses() -> Vec<(String, String)> {
    let Ok(handle) = connect() else {
        return Vec::new();
    };
    let Ok(links) = handle.link().get().execute().try_collect::<Vec<_>>().await else {
        return Vec::new();
    };
    let name_of = |index: u32| {
        links
            .iter()
            .find(|link| link.header.index == index)
            .and_then(|link| {
                link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| index.to_string())
    };
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
                name_of(message.header.index),
                format!("{address}/{}", message.header.prefix_len),
            ))
        })
        .collect()
}
