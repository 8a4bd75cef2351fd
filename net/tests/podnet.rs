//! The pods' bridge and veth pairs, made by netlink in network namespaces of the test's
//! own (root only): a "node" namespace with the bridge, and a "pod" namespace connected
//! to it. A TCP connection each way shows the pod's address, the bridge and the pod's
//! default route at work.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use keelson_net::ipam::PodCidr;

/// Pins a new network namespace at `at` (as the kubelet's sandbox does).
fn pinned_namespace(at: &Path) {
    let at = at.to_owned();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::fs::File::create(&at).unwrap();
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    })
    .join()
    .unwrap();
}

/// Runs `work` on a new thread inside the namespace pinned at `namespace`.
fn inside<T: Send + 'static>(namespace: &Path, work: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(namespace).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        work()
    })
    .join()
    .unwrap()
}

#[test]
fn a_pod_on_the_bridge_reaches_the_node_and_the_node_reaches_the_pod() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        keelson_testkit::skip("net::podnet", "network namespaces need root");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let node: PathBuf = directory.path().join("node");
    let pod: PathBuf = directory.path().join("pod");
    pinned_namespace(&node);
    pinned_namespace(&pod);
    let cidr = PodCidr::parse("10.244.7.0/24").unwrap();
    let pod_address = Ipv4Addr::new(10, 244, 7, 2);
    let pod_for_node = pod.clone();
    let mtu = inside(&node, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mtu = keelson_net::podnet::ensure_bridge(&cidr).await.unwrap();
            let node_end = keelson_net::podnet::node_end_name("0a1b2c3d-4e5f");
            assert_eq!(node_end, "veth0a1b2c3d");
            keelson_net::podnet::attach(&pod_for_node, &node_end, pod_address, &cidr, mtu)
                .await
                .unwrap();
            // Again: already connected, left as it is.
            keelson_net::podnet::attach(&pod_for_node, &node_end, pod_address, &cidr, mtu)
                .await
                .unwrap();
            mtu
        })
    });
    assert_eq!(
        mtu, 1500,
        "a namespace without a default route gives the usual MTU"
    );
    // The node reaches the pod's address through the bridge.
    let listener = inside(&pod, move || {
        TcpListener::bind(SocketAddrV4::new(pod_address, 8080)).unwrap()
    });
    let sent = inside(&node, move || {
        let mut stream = TcpStream::connect(SocketAddrV4::new(pod_address, 8080)).unwrap();
        stream.write_all(b"from the node").unwrap();
        stream.local_addr().unwrap()
    });
    let (mut accepted, peer) = listener.accept().unwrap();
    let mut received = String::new();
    accepted.read_to_string(&mut received).unwrap();
    assert_eq!(received, "from the node");
    assert_eq!(
        peer.ip().to_string(),
        "10.244.7.1",
        "the node speaks from the gateway"
    );
    assert_eq!(peer, sent);
    // The pod reaches an address of the node off its own subnet by its default route.
    let gateway_side = inside(&node, || TcpListener::bind("10.244.7.1:9090").unwrap());
    inside(&pod, || {
        TcpStream::connect("10.244.7.1:9090").unwrap();
        let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
        // Destination 0.0.0.0 via 10.244.7.1 (little-endian hex 0107F40A) on eth0.
        assert!(
            routes
                .lines()
                .any(|line| line.starts_with("eth0\t00000000\t0107F40A")),
            "{routes}"
        );
    });
    drop(gateway_side.accept().unwrap());
    inside(&node, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(nix::net::if_::if_nametoindex("veth0a1b2c3d").is_ok());
        runtime
            .block_on(keelson_net::podnet::detach("veth0a1b2c3d"))
            .unwrap();
        assert!(
            nix::net::if_::if_nametoindex("veth0a1b2c3d").is_err(),
            "the pair is gone"
        );
        // Detaching what is not there is not an error.
        runtime
            .block_on(keelson_net::podnet::detach("veth0a1b2c3d"))
            .unwrap();
    });
    for pinned in [&node, &pod] {
        nix::mount::umount2(pinned.as_path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
