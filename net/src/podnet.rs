//! The pods' network on the node, through rtnetlink: a bridge (`keelson0`) holding the
//! gateway address of the node's pod CIDR, and for each pod a veth pair, its node end on
//! the bridge and its other end the pod's `eth0`, with the pod's address and a default
//! route through the gateway. The node forwards (`ip_forward`), and [`crate::nat`]
//! masquerades what leaves.
//!
//! The pod's end is made directly in the pod's network namespace (the veth's peer is
//! created there by descriptor), and configured over a netlink socket opened in that
//! namespace by a thread of its own, so the agent's threads never change namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::ipam::PodCidr;

/// The pods' bridge.
pub const BRIDGE: &str = "keelson0";
/// The pod's end of its veth pair, in its namespace.
pub const POD_INTERFACE: &str = "eth0";

/// The node end of a pod's veth pair: `veth` and eight hex digits of the pod's uid (at
/// most 15 bytes, as the kernel allows).
pub fn node_end_name(pod_uid: &str) -> String {
    let hex: String = pod_uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("veth{hex}")
}

fn connect() -> anyhow::Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink handle whose socket lives in the network namespace pinned at `namespace`.
async fn connect_in(namespace: &Path) -> anyhow::Result<Handle> {
    let file = std::fs::File::open(namespace).with_context(|| {
        format!(
            "cannot open the pod's network namespace {}",
            namespace.display()
        )
    })?;
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle, _) = std::thread::spawn(move || {
        let _entered = runtime.enter();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("cannot enter the pod's network namespace")?;
        // The socket belongs to the namespace it is made in, whatever thread uses it.
        rtnetlink::new_connection().context("cannot open a netlink socket in the pod's namespace")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the pod namespace's thread panicked"))??;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> anyhow::Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(message))
            if message.code.map(|code| code.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(error) => Err(error).with_context(|| format!("cannot look up link {name}")),
    }
}

/// True for netlink's "File exists".
fn exists(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(message)
        if message.code.map(|code| code.get()) == Some(-libc::EEXIST))
}

/// Makes the bridge with the CIDR's gateway address when it is missing, brings it up,
/// and lets the node forward. Returns the MTU pods get: the node's default-route link's.
pub async fn ensure_bridge(cidr: &PodCidr) -> anyhow::Result<u32> {
    let handle = connect()?;
    let index = match link_index(&handle, BRIDGE).await? {
        Some(index) => index,
        None => {
            match handle
                .link()
                .add(LinkBridge::new(BRIDGE).build())
                .execute()
                .await
            {
                Err(error) if !exists(&error) => {
                    return Err(error).context("cannot create the pods' bridge keelson0")
                }
                _ => {}
            }
            link_index(&handle, BRIDGE)
                .await?
                .context("the bridge keelson0 vanished as it was made")?
        }
    };
    match handle
        .address()
        .add(index, IpAddr::V4(cidr.gateway()), cidr.prefix())
        .execute()
        .await
    {
        Err(error) if !exists(&error) => {
            return Err(error).context("cannot give keelson0 the pods' gateway address")
        }
        _ => {}
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context("cannot bring keelson0 up")?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("cannot let the node forward pod traffic (net.ipv4.ip_forward)")?;
    Ok(uplink_mtu(&handle).await.unwrap_or(1500))
}

/// The MTU of the link the node's default route leaves by.
async fn uplink_mtu(handle: &Handle) -> Option<u32> {
    use netlink_packet_route::route::RouteAttribute;
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .ok()?;
    let default = routes
        .iter()
        .filter(|route| route.header.destination_prefix_length == 0)
        .filter_map(|route| {
            route
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                })
        })
        .next()?;
    let link: LinkMessage = handle
        .link()
        .get()
        .match_index(default)
        .execute()
        .try_next()
        .await
        .ok()??;
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
}

/// Connects the pod whose network namespace is pinned at `namespace`: a veth pair
/// (`node_end` on the bridge, `eth0` in the pod, both of `mtu`), the pod's `address`
/// and its default route through the gateway. A pod already connected is left as it is.
pub async fn attach(
    namespace: &Path,
    node_end: &str,
    address: Ipv4Addr,
    cidr: &PodCidr,
    mtu: u32,
) -> anyhow::Result<()> {
    let handle = connect()?;
    if link_index(&handle, node_end).await?.is_some() {
        return Ok(());
    }
    let bridge = link_index(&handle, BRIDGE)
        .await?
        .context("the pods' bridge keelson0 is missing")?;
    let pod_namespace = std::fs::File::open(namespace)
        .with_context(|| format!("cannot open {}", namespace.display()))?;
    // The peer is born in the pod's namespace, already named eth0.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(POD_INTERFACE.to_owned())
        .mtu(mtu)
        .setns_by_fd(pod_namespace.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(node_end.to_owned())
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle
        .link()
        .add(veth)
        .execute()
        .await
        .with_context(|| format!("cannot create the pod's veth pair {node_end}"))?;
    let index = link_index(&handle, node_end)
        .await?
        .with_context(|| format!("{node_end} vanished as it was made"))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("cannot put {node_end} on keelson0"))?;
    // Inside the pod.
    let inside = connect_in(namespace).await?;
    let eth0 = link_index(&inside, POD_INTERFACE)
        .await?
        .context("the pod's eth0 did not arrive in its namespace")?;
    inside
        .address()
        .add(eth0, IpAddr::V4(address), cidr.prefix())
        .execute()
        .await
        .with_context(|| format!("cannot give the pod {address}"))?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .context("cannot bring the pod's eth0 up")?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(eth0)
        .gateway(cidr.gateway())
        .build();
    inside
        .route()
        .add(route)
        .execute()
        .await
        .context("cannot give the pod its default route")?;
    Ok(())
}

/// Takes an old pod CIDR's gateway address (and so its route) off the bridge, once the
/// node's pods moved to another CIDR; an address that is not there is skipped.
pub async fn remove_bridge_address(cidr: &PodCidr) -> anyhow::Result<()> {
    let handle = connect()?;
    let Some(index) = link_index(&handle, BRIDGE).await? else {
        return Ok(());
    };
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let gateway = IpAddr::V4(cidr.gateway());
    while let Some(message) = addresses
        .try_next()
        .await
        .context("cannot list keelson0's addresses")?
    {
        let holds = message.attributes.iter().any(|attribute| {
            matches!(attribute, AddressAttribute::Address(address) if *address == gateway)
        });
        if holds {
            handle
                .address()
                .del(message)
                .execute()
                .await
                .with_context(|| format!("cannot remove {gateway} from keelson0"))?;
        }
    }
    Ok(())
}

/// Removes a pod's veth pair (deleting the node end deletes both); a pair that is not
/// there is skipped.
pub async fn detach(node_end: &str) -> anyhow::Result<()> {
    let handle = connect()?;
    if let Some(index) = link_index(&handle, node_end).await? {
        handle
            .link()
            .del(index)
            .execute()
            .await
            .with_context(|| format!("cannot remove {node_end}"))?;
    }
    Ok(())
}
