//! Joining the cluster: the start-up phase that runs membership gossip when the config has a
//! `cluster` section.
//!
//! The decisions are `keelson-cluster`'s; this gathers what the core needs from the machine:
//! the address to gossip from (the node's IP, as the kubelet reports it), the generation (one more than the last start's, kept on STATE), the
//! keys (from the cluster's name and secret), the seeds (resolved) or, with none, the
//! segment's broadcast address, and a random session.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use keelson_cluster::membership::{GossipConfig, GOSSIP_PORT};
use keelson_cluster::shell::{Gossip, GossipSettings};
use keelson_cluster::{Keyring, NodeId, NodeInfo};
use keelson_config::model::MachineConfig;
use ring::rand::{SecureRandom, SystemRandom};
use tracing::{info, warn};

use crate::system::Identity;

/// The gossip of this node: unset while the agent starts, then running or why not.
pub type SharedGossip = std::sync::OnceLock<Result<Gossip, String>>;

/// Clusters are sized up to this for SWIM's timings until the control plane knows better.
const EXPECTED_NODES: u32 = 16;

/// Phase: start gossiping if the config names a cluster. A problem is logged and kept for
/// `keelctl cluster members`; the node still serves its API and pods.
pub async fn start(
    config: Option<&MachineConfig>,
    identity: &Identity,
    state_dir: &Path,
    api_port: u16,
) -> Option<Result<Gossip, String>> {
    let cluster = config?.cluster.as_ref()?;
    let started = async {
        let address = wait_for_gossip_address().await?;
        let generation = next_generation(&state_dir.join("cluster/generation"))?;
        let name = nix::unistd::gethostname()
            .map_err(|error| format!("cannot read the hostname: {error}"))?
            .to_string_lossy()
            .into_owned();
        let seeds = resolve_seeds(&cluster.seeds).await;
        let discover = cluster.seeds.is_empty().then_some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::BROADCAST),
            GOSSIP_PORT,
        ));
        let random = SystemRandom::new();
        let mut session = [0u8; 16];
        let mut rng_seed = [0u8; 8];
        random
            .fill(&mut session)
            .and_then(|()| random.fill(&mut rng_seed))
            .map_err(|_| "the system's random source failed".to_string())?;
        let me = SocketAddr::new(address, GOSSIP_PORT);
        let settings = GossipSettings {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), GOSSIP_PORT),
            identity: NodeId::new(&name, me, generation),
            info: NodeInfo {
                name: name.clone(),
                generation,
                revision: 0,
                addresses: vec![address],
                role: cluster.role,
                os_version: identity.os_version.clone(),
                slot: identity.slot.clone(),
                pod_cidr: config
                    .and_then(|config| config.kubelet.as_ref())
                    .map(|kubelet| kubelet.pod_cidr().to_string()),
                api_endpoint: SocketAddr::new(address, api_port).to_string(),
            },
            keyring: keyring_of(cluster),
            seeds,
            discover,
            config: GossipConfig::lan(EXPECTED_NODES),
            session,
            rng_seed: u64::from_le_bytes(rng_seed),
        };
        let gossip = Gossip::start(settings)
            .await
            .map_err(|error| error.to_string())?;
        info!(
            "cluster: {name} gossips for cluster {} from {me} (generation {generation}, {})",
            cluster.name,
            if cluster.seeds.is_empty() {
                "finding members on the local segment".to_string()
            } else {
                format!("seeds {}", cluster.seeds.join(", "))
            }
        );
        Ok(gossip)
    }
    .await;
    if let Err(problem) = &started {
        warn!("cluster: not gossiping: {problem}");
    }
    Some(started)
}

/// The gossip keys a cluster section names: `secret` seals, `acceptSecrets` also open.
pub fn keyring_of(cluster: &keelson_config::model::Cluster) -> Keyring {
    Keyring::of_secrets(&cluster.name, &cluster.secret, &cluster.accept_secrets)
}

/// After a live apply-config: gossip takes the config's keys at once (a secret rotation's
/// step). Other cluster settings take effect at the next start.
pub async fn follow_config(config: Option<&MachineConfig>, gossip: &SharedGossip) {
    let (Some(cluster), Some(Ok(gossip))) = (config.and_then(|c| c.cluster.as_ref()), gossip.get())
    else {
        return;
    };
    gossip.set_keyring(keyring_of(cluster)).await;
    info!(
        "cluster: gossip keys in force: sealing with the secret, {} more accepted",
        cluster.accept_secrets.len()
    );
}

/// How long to wait for the network (a DHCP lease) before giving up on gossip.
const NETWORK_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// The address to gossip from: the node's IP as the kubelet reports it (the address on the
/// default route's link, or else the first usable one), once it has one; DHCP may still be
/// at work when the agent starts or leaves maintenance mode.
async fn wait_for_gossip_address() -> Result<IpAddr, String> {
    let started = tokio::time::Instant::now();
    let mut said = false;
    loop {
        if let Some(address) = keelson_net::node::node_ip_in_force().await {
            return Ok(address);
        }
        if started.elapsed() >= NETWORK_WAIT {
            return Err(format!(
                "the node has no address to gossip from after {} s; give it a network",
                NETWORK_WAIT.as_secs()
            ));
        }
        if !said {
            info!("cluster: waiting for an address to gossip from");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// One more than the last start's generation, written durably before it is used, so that
/// a node never reuses one even if it crashes right after.
fn next_generation(path: &Path) -> Result<u64, String> {
    let last = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|error| {
            format!(
                "{} holds {:?}, not a generation ({error}); remove it to start again at 1",
                path.display(),
                text.trim()
            )
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let next = last + 1;
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    }
    keelson_linux::durable::write(path, format!("{next}\n").as_bytes())
        .map_err(|error| format!("cannot keep the generation in {}: {error}", path.display()))?;
    Ok(next)
}

/// The seeds' addresses; a seed that does not resolve is logged and left out (it may
/// resolve at the next start, and the others may be enough).
async fn resolve_seeds(seeds: &[String]) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(found) => addresses.extend(found.take(1)),
            Err(error) => warn!("cluster: seed {seed} does not resolve: {error}"),
        }
    }
    addresses
}

/// The answer to `Cluster.Members`.
pub fn members_response(
    config: Option<&MachineConfig>,
    gossip: &SharedGossip,
) -> keelson_api::cluster::MembersResponse {
    use keelson_api::cluster::{GossipCounters, Member, MembersResponse};
    let Some(cluster) = config.and_then(|config| config.cluster.as_ref()) else {
        return MembersResponse::default();
    };
    let mut response = MembersResponse {
        enabled: true,
        cluster: cluster.name.clone(),
        ..MembersResponse::default()
    };
    match gossip.get() {
        None => {
            response.problem =
                "gossip is starting (it waits for the node to have an address first)".into()
        }
        Some(Err(problem)) => response.problem = problem.clone(),
        Some(Ok(gossip)) => {
            let counters = gossip.counters();
            response.counters = Some(GossipCounters {
                packets_sent: counters.packets_sent,
                bytes_sent: counters.bytes_sent,
                packets_received: counters.packets_received,
                bytes_received: counters.bytes_received,
                refused: counters.refused.into_iter().collect(),
            });
            response.members = gossip
                .members()
                .into_iter()
                .map(|member| {
                    let mut listed = Member {
                        local: member.id.name == gossip.name(),
                        name: member.id.name,
                        address: member.id.addr.to_string(),
                        state: member.state.as_str().into(),
                        generation: member.id.generation,
                        ..Member::default()
                    };
                    // What the member tells about itself may not have arrived yet.
                    if let Some(info) = member.info {
                        listed.role = info.role.name().into();
                        listed.version = info.os_version;
                        listed.slot = info.slot;
                        listed.pod_cidr = info.pod_cidr.unwrap_or_default();
                        listed.api_endpoint = info.api_endpoint;
                    }
                    listed
                })
                .collect();
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_takes_a_new_generation_and_a_damaged_file_is_named() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cluster/generation");
        assert_eq!(next_generation(&path).unwrap(), 1);
        assert_eq!(next_generation(&path).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
        std::fs::write(&path, "two").unwrap();
        let error = next_generation(&path).unwrap_err();
        assert!(error.contains("holds \"two\", not a generation"), "{error}");
        assert!(error.contains("remove it"), "{error}");
    }
}
