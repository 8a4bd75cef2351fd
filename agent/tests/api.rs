//! The agent's API, served by the real `keelsond` binary on 127.0.0.1 of the build host.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keelson_api::machine::machine_client::MachineClient;
use keelson_api::machine::{RebootRequest, ShutdownRequest, StatusRequest};

struct Agent {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent() -> Agent {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keelsond"))
        .args([
            "--unmanaged",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ])
        .arg(state.path())
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Agent {
        child,
        port,
        _state: state,
    }
}

async fn client(port: u16) -> MachineClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match MachineClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return client,
            Err(error) if Instant::now() > deadline => panic!("agent never listened: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn status_reports_this_host_and_records_the_boot() {
    let agent = start_agent();
    let mut client = client(agent.port).await;
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        status.hostname,
        nix::unistd::gethostname().unwrap().to_string_lossy()
    );
    assert!(!status.kernel_release.is_empty());
    assert!(status.mounts.iter().any(|mount| mount.mount_point == "/"));
    let agent_info = status.agent.unwrap();
    assert_eq!(agent_info.pid as u32, agent.child.id());
    assert!(agent_info.executable.ends_with("keelsond"));
    assert!(agent_info.rss_bytes > 0);
    assert_eq!(
        status.boots.len(),
        1,
        "the boot is recorded in the state directory"
    );
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(status.boots[0].boot_id, boot_id.trim());
}

#[tokio::test]
async fn power_requests_are_refused_when_pid1_is_not_keelson() {
    let agent = start_agent();
    let mut client = client(agent.port).await;
    for result in [
        client.reboot(RebootRequest {}).await.map(drop),
        client.shutdown(ShutdownRequest {}).await.map(drop),
    ] {
        let error = result.unwrap_err();
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
        assert!(
            error.message().contains("PID 1 is not keelson-init"),
            "{}",
            error.message()
        );
    }
}
