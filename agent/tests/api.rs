//! The agent's API server, run in-process on 127.0.0.1 with real TLS: every role against
//! every RPC, the handshake refusals, maintenance mode and its token, and robustness
//! against bad clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keelson_agent::api::security::ApiSecurity;
use keelson_agent::api::ApiContext;
use keelson_api::client::{self, ClientTls};
use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::MembersRequest;
use keelson_api::files::files_client::FilesClient;
use keelson_api::files::{ListRequest, ReadRequest};
use keelson_api::images::images_client::ImagesClient;
use keelson_api::images::{
    import_request, ImportOptions, ImportRequest, ListRequest as ImagesListRequest, PullRequest,
    RemoveRequest,
};
use keelson_api::machine::machine_client::MachineClient;
use keelson_api::machine::*;
use keelson_api::pki::{self, CertifiedKey, ClusterCa};
use keelson_api::roles::{Role, METHOD_ROLES};
use keelson_api::update::update_client::UpdateClient;
use keelson_api::update::{
    apply_request, ApplyOptions, ApplyRequest, CancelRequest, CheckRequest, RollbackRequest,
    StatusRequest as UpdateStatusRequest,
};
use keelson_config::model::ApiPki;
use keelson_provision::machine_config::{ConfigReport, Environment};
use time::OffsetDateTime;
use tonic::transport::Channel;
use tonic::Code;

/// A cluster CA with a node certificate and a client certificate per role.
struct Pki {
    ca: ClusterCa,
    node: CertifiedKey,
    clients: Vec<(Role, CertifiedKey)>,
}

impl Pki {
    fn new() -> Pki {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::generate("test", now).unwrap();
        let node = ca
            .issue_node(&[pki::node_server_name("test")], now)
            .unwrap();
        let clients = Role::ALL
            .into_iter()
            .map(|role| {
                let client = ca
                    .issue_client(
                        role.name(),
                        role,
                        now - pki::CLOCK_SKEW,
                        now + pki::CLIENT_VALIDITY,
                    )
                    .unwrap();
                (role, client)
            })
            .collect::<Vec<_>>();
        // Nodes call each other with their own certificate, which carries the node role.
        let mut clients = clients;
        clients.push((Role::Node, node.clone()));
        Pki { ca, node, clients }
    }

    fn api(&self) -> ApiPki {
        ApiPki {
            ca: self.ca.certified().cert_pem.clone(),
            cert: self.node.cert_pem.clone(),
            key: self.node.key_pem.clone(),
        }
    }

    fn tls_for(&self, client: &CertifiedKey) -> ClientTls {
        let config = keelson_api::tls::client_config(
            &self.ca.certified().cert_pem,
            &client.cert_pem,
            &client.key_pem,
        )
        .unwrap();
        ClientTls::new(config, &pki::node_server_name("test")).unwrap()
    }

    fn tls(&self, role: Role) -> ClientTls {
        let client = &self.clients.iter().find(|(r, _)| *r == role).unwrap().1;
        self.tls_for(client)
    }
}

/// An API server on 127.0.0.1, with files under a temporary root.
struct Server {
    address: SocketAddr,
    files: tempfile::TempDir,
    context: Arc<ApiContext>,
}

async fn serve(security: ApiSecurity) -> Server {
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(files.path().join("etc")).unwrap();
    std::fs::write(files.path().join("etc/hostname"), "node-1\n").unwrap();
    std::fs::create_dir_all(files.path().join("var/lib/keelson/config")).unwrap();
    std::fs::write(
        files.path().join("var/lib/keelson/config/machine.yaml"),
        "secret",
    )
    .unwrap();
    std::fs::write(files.path().join("var/big"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", files.path().join("var/escape")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let context = Arc::new(ApiContext {
        state_dir: files.path().join("var/lib/keelson"),
        environment: Environment {
            state_dir: files.path().join("var/lib/keelson"),
            fw_cfg_root: files.path().join("fw_cfg"),
            cmdline: String::new(),
            root: files.path().to_path_buf(),
        },
        report: Arc::new(RwLock::new(ConfigReport::unmanaged())),
        in_force: tokio::sync::Mutex::new(None),
        security,
        manage_machine: false,
        listen: address,
        kmsg: PathBuf::from("/dev/kmsg"),
        files_root: files.path().to_path_buf(),
        update: Arc::new(keelson_updater::UpdateEngine::unavailable(
            "the agent does not manage this machine",
        )),
        images: Ok(Arc::new(keelson_agent::api::images::ImageStoreHandle {
            store: Arc::new(
                keelson_images::ImageStore::open(&files.path().join("var/lib/keelson/images"))
                    .unwrap(),
            ),
            operations: tokio::sync::Mutex::new(()),
        })),
        // A development host runs no pods; the service says so.
        pods: std::sync::OnceLock::from(Err("the agent does not manage this machine".to_owned())),
        static_pods: Default::default(),
        gossip: Default::default(),
        control: Default::default(),
    });
    tokio::spawn(keelson_agent::api::serve(listener, context.clone()));
    Server {
        address,
        files,
        context,
    }
}

/// Why the first call with `tls` fails: in connect, or (TLS 1.3 lets the client finish
/// its handshake first) in the first call.
async fn first_failure(server: &Server, tls: &ClientTls) -> String {
    match channel(server, tls).await {
        Err(error) => error,
        Ok(channel) => match MachineClient::new(channel).version(VersionRequest {}).await {
            Ok(_) => "the call succeeded".into(),
            Err(status) => keelson_ctl::describe_status(&status),
        },
    }
}

async fn channel(server: &Server, tls: &ClientTls) -> Result<Channel, String> {
    client::connect(&server.address.to_string(), tls)
        .await
        .map_err(|error| client::root_cause(&error))
}

const NATIVE: &[u8] = b"apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nhostname: applied\n";

/// [`NATIVE`] with the API credentials of `pki`.
fn native_with_api(pki: &Pki) -> Vec<u8> {
    let mut config = keelson_config::MachineConfig::empty();
    config.hostname = Some("applied".into());
    config.api = Some(pki.api());
    keelson_config::native::to_yaml(&config).into_bytes()
}

/// Calls `method` (a gRPC path from the role table) with a harmless request.
async fn call(channel: Channel, method: &str, config: &[u8]) -> Result<(), tonic::Status> {
    let mut machine = MachineClient::new(channel.clone());
    let mut files = FilesClient::new(channel.clone());
    let mut update = UpdateClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let mut pods = keelson_api::pods::pods_client::PodsClient::new(channel.clone());
    let name = method.rsplit('/').next().unwrap();
    if method.starts_with("/keelson.pods.v1.") {
        use keelson_api::pods as api;
        let (namespace, pod) = (String::new(), "web".to_owned());
        return match name {
            "Apply" => pods
                .apply(api::ApplyRequest {
                    pod_json: "{}".into(),
                })
                .await
                .map(drop),
            "List" => pods.list(api::ListRequest::default()).await.map(drop),
            "Top" => pods.top(api::ListRequest::default()).await.map(drop),
            "Get" => pods
                .get(api::GetRequest {
                    namespace,
                    name: pod,
                })
                .await
                .map(drop),
            "Events" => pods
                .events(api::GetRequest {
                    namespace,
                    name: pod,
                })
                .await
                .map(drop),
            "Delete" => pods
                .delete(api::DeleteRequest {
                    namespace,
                    name: pod,
                    ..Default::default()
                })
                .await
                .map(drop),
            "Logs" => pods
                .logs(api::LogsRequest {
                    name: pod,
                    ..Default::default()
                })
                .await
                .map(drop),
            "Exec" => {
                let start = api::ExecRequest {
                    item: Some(api::exec_request::Item::Start(api::ExecStart {
                        name: pod,
                        command: vec!["true".into()],
                        ..Default::default()
                    })),
                };
                pods.exec(tokio_stream::iter(vec![start])).await.map(drop)
            }
            other => panic!("the test does not know how to call {other}: add it"),
        };
    }
    if method.starts_with("/keelson.images.v1.") {
        return match name {
            "List" => images.list(ImagesListRequest {}).await.map(drop),
            "Import" => {
                let options = ImportRequest {
                    item: Some(import_request::Item::Options(ImportOptions::default())),
                };
                images
                    .import(tokio_stream::iter(vec![options]))
                    .await
                    .map(drop)
            }
            "Pull" => images
                .pull(PullRequest {
                    reference: "nothing:here".into(),
                })
                .await
                .map(drop),
            "Remove" => images
                .remove(RemoveRequest {
                    reference: "nothing:here".into(),
                })
                .await
                .map(drop),
            other => panic!("the test does not know how to call {other}: add it"),
        };
    }
    if method.starts_with("/keelson.cluster.v1.") {
        use keelson_api::cluster as api;
        let mut cluster = ClusterClient::new(channel.clone());
        return match name {
            "Members" => cluster.members(MembersRequest {}).await.map(drop),
            "Status" => cluster.status(api::StatusRequest {}).await.map(drop),
            "Raft" => cluster.raft(api::RaftRequest::default()).await.map(drop),
            "Formation" => cluster
                .formation(api::FormationRequest::default())
                .await
                .map(drop),
            "Register" => cluster
                .register(api::RegisterRequest::default())
                .await
                .map(drop),
            "Nodes" => cluster.nodes(api::NodesRequest {}).await.map(drop),
            "DeleteNode" => cluster
                .delete_node(api::DeleteNodeRequest {
                    name: "gone".into(),
                })
                .await
                .map(drop),
            "Write" => cluster.write(api::WriteRequest::default()).await.map(drop),
            "Lock" => cluster.lock(api::LockRequest::default()).await.map(drop),
            "LockStatus" => cluster
                .lock_status(api::LockStatusRequest {})
                .await
                .map(drop),
            other => panic!("the test does not know how to call {other}: add it"),
        };
    }
    if method.starts_with("/keelson.update.v1.") {
        return match name {
            "Status" => update.status(UpdateStatusRequest {}).await.map(drop),
            "Apply" => {
                let options = ApplyRequest {
                    item: Some(apply_request::Item::Options(ApplyOptions::default())),
                };
                update
                    .apply(tokio_stream::iter(vec![options]))
                    .await
                    .map(drop)
            }
            "Check" => update.check(CheckRequest::default()).await.map(drop),
            "Rollback" => update.rollback(RollbackRequest {}).await.map(drop),
            "Cancel" => update.cancel(CancelRequest {}).await.map(drop),
            other => panic!("the test does not know how to call {other}: add it"),
        };
    }
    match name {
        "Version" => machine.version(VersionRequest {}).await.map(drop),
        "Status" => machine.status(StatusRequest {}).await.map(drop),
        "Services" => machine.services(ServicesRequest {}).await.map(drop),
        "Logs" => machine
            .logs(LogsRequest {
                service: "keelsond".into(),
                follow: false,
                tail: 5,
            })
            .await
            .map(drop),
        "Dmesg" => machine
            .dmesg(DmesgRequest {
                follow: false,
                tail: 5,
            })
            .await
            .map(drop),
        "Reboot" => machine.reboot(RebootRequest {}).await.map(drop),
        "Shutdown" => machine.shutdown(ShutdownRequest {}).await.map(drop),
        "RestartAgent" => machine
            .restart_agent(RestartAgentRequest {})
            .await
            .map(drop),
        "ApplyConfig" => machine
            .apply_config(ApplyConfigRequest {
                config: config.to_vec(),
                mode: 0,
                dry_run: true,
            })
            .await
            .map(drop),
        "Reset" => machine
            .reset(ResetRequest { confirm: true })
            .await
            .map(drop),
        "List" => files
            .list(ListRequest {
                path: "/etc".into(),
                recursive: false,
            })
            .await
            .map(drop),
        "Read" => files
            .read(ReadRequest {
                path: "/etc/hostname".into(),
            })
            .await
            .map(drop),
        other => panic!("the test does not know how to call {other}: add it"),
    }
}

#[tokio::test]
async fn every_role_against_every_rpc() {
    let pki = Pki::new();
    let server = serve(ApiSecurity::mutual(&pki.api()).unwrap()).await;
    let mut table = Vec::new();
    for (method, needed) in METHOD_ROLES {
        for role in Role::ALL.into_iter().chain([Role::Node]) {
            let channel = channel(&server, &pki.tls(role)).await.unwrap();
            let outcome = call(channel, method, &native_with_api(&pki)).await;
            let denied = matches!(&outcome, Err(status) if status.code() == Code::PermissionDenied);
            table.push(format!(
                "{method:45} {role:8} {}",
                if denied { "denied" } else { "allowed" }
            ));
            assert_eq!(
                denied,
                !role.allows(*needed),
                "{role} calling {method}: {outcome:?}"
            );
            if let Err(status) = outcome {
                if denied {
                    assert!(
                        status.message().contains(&format!("needs role {needed}")),
                        "{}",
                        status.message()
                    );
                } else {
                    // Allowed: the image calls meet an empty store (an empty archive, no
                    // such image), the pod calls a node that runs no pods, the rest an
                    // agent that does not manage its machine.
                    let expected = match *method {
                        "/keelson.images.v1.Images/Import" => Code::InvalidArgument,
                        "/keelson.images.v1.Images/Remove" => Code::NotFound,
                        pods if pods.starts_with("/keelson.pods.v1.") => {
                            assert!(status.message().contains("this node runs no pods: the agent does not manage this machine"), "{status:?}");
                            Code::Unavailable
                        }
                        _ => Code::FailedPrecondition,
                    };
                    assert_eq!(status.code(), expected, "{role} {method}: {status:?}");
                }
            }
        }
    }
    println!("{}", table.join("\n"));
}

#[tokio::test]
async fn a_node_whose_config_names_no_cluster_says_it_gossips_with_no_one() {
    let pki = Pki::new();
    let server = serve(ApiSecurity::mutual(&pki.api()).unwrap()).await;
    let channel = channel(&server, &pki.tls(Role::Reader)).await.unwrap();
    let answer = ClusterClient::new(channel)
        .members(MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.enabled, "{answer:?}");
    assert!(answer.members.is_empty(), "{answer:?}");
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused_in_the_handshake() {
    let pki = Pki::new();
    let server = serve(ApiSecurity::mutual(&pki.api()).unwrap()).await;
    let now = OffsetDateTime::now_utc();

    let anonymous = rustls::ClientConfig::builder_with_provider(keelson_api::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            for certificate in
                keelson_api::tls::certificates("ca", &pki.ca.certified().cert_pem).unwrap()
            {
                roots.add(certificate).unwrap();
            }
            roots
        })
        .with_no_client_auth();
    let mut anonymous = anonymous;
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let anonymous = ClientTls::new(anonymous, &pki::node_server_name("test")).unwrap();

    // Another cluster's CA. (One that copies our CA's name fails on the signature instead:
    // DecryptError / BadSignature.)
    let foreign_ca = ClusterCa::generate("other", now).unwrap();
    let foreign = foreign_ca
        .issue_client(
            "mallory",
            Role::Admin,
            now - pki::CLOCK_SKEW,
            now + pki::CLIENT_VALIDITY,
        )
        .unwrap();
    let expired = pki
        .ca
        .issue_client(
            "former-admin",
            Role::Admin,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .unwrap();
    let cases = [
        ("no certificate", anonymous, &["CertificateRequired"][..]),
        ("another CA", pki.tls_for(&foreign), &["UnknownCA"][..]),
        (
            "expired",
            pki.tls_for(&expired),
            &["CertificateExpired"][..],
        ),
    ];
    for (case, tls, alerts) in cases {
        let error = first_failure(&server, &tls).await;
        assert!(
            error.contains("fatal alert") && alerts.iter().any(|alert| error.contains(alert)),
            "{case}: {error}"
        );
    }
    // The node's certificate is verified too: a client trusting another CA refuses it.
    let misled = ClientTls::new(
        keelson_api::tls::client_config(
            &foreign_ca.certified().cert_pem,
            &foreign.cert_pem,
            &foreign.key_pem,
        )
        .unwrap(),
        &pki::node_server_name("test"),
    )
    .unwrap();
    let error = first_failure(&server, &misled).await;
    assert!(error.contains("UnknownIssuer"), "{error}");
}

fn maintenance_tls(fingerprint: Option<String>) -> ClientTls {
    ClientTls::new(
        keelson_api::tls::maintenance_client_config(fingerprint).unwrap(),
        pki::MAINTENANCE_SERVER_NAME,
    )
    .unwrap()
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert(keelson_api::TOKEN_METADATA_KEY, token.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn maintenance_mode_takes_only_apply_config_with_the_right_token() {
    let server = serve(ApiSecurity::maintenance("no-config".into()).unwrap()).await;
    let security = &server.context.security;
    let fingerprint = security.fingerprint();
    // The token is read where an operator reads it: the console line.
    security.announce_maintenance();
    let line = keelson_log::ring()
        .snapshot(0)
        .0
        .into_iter()
        .rev()
        .find(|entry| entry.message.contains(&fingerprint) && entry.message.contains("token="))
        .expect("the maintenance line is on the console");
    let token = line
        .message
        .split("token=")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let mut machine = MachineClient::new(
        channel(&server, &maintenance_tls(Some(fingerprint.clone())))
            .await
            .unwrap(),
    );
    let apply = ApplyConfigRequest {
        config: NATIVE.to_vec(),
        mode: 0,
        dry_run: true,
    };

    let right = machine
        .apply_config(with_token(apply.clone(), Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert!(right.diff.contains("+hostname: applied"), "{}", right.diff);
    for (token, case) in [
        (Some("0123456789abcdef01234567"), "wrong"),
        (None, "missing"),
    ] {
        let status = machine
            .apply_config(with_token(apply.clone(), token))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{case} token: {status:?}"
        );
    }
    let refused = machine
        .status(with_token(StatusRequest {}, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("only apply-config"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("no-config"),
        "{}",
        refused.message()
    );

    // A non-dry run passes the token check and reaches the service, which refuses only
    // because this agent does not manage the host it runs on.
    let real = machine
        .apply_config(with_token(
            ApplyConfigRequest {
                dry_run: false,
                ..apply
            },
            Some(&token),
        ))
        .await
        .unwrap_err();
    assert_eq!(real.code(), Code::FailedPrecondition, "{real:?}");

    // A pinned fingerprint that does not match stops the handshake.
    let error = first_failure(&server, &maintenance_tls(Some("00".repeat(32)))).await;
    assert!(error.contains("fingerprint"), "{error}");
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_its_field() {
    let pki = Pki::new();
    let server = serve(ApiSecurity::mutual(&pki.api()).unwrap()).await;
    let mut machine = MachineClient::new(channel(&server, &pki.tls(Role::Admin)).await.unwrap());
    let status = machine
        .apply_config(ApplyConfigRequest {
            config: b"apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nhostname: -bad-\n"
                .to_vec(),
            mode: 0,
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("hostname"),
        "{}",
        status.message()
    );

    // A config without API credentials would lock every client out of a node that serves
    // mutual TLS: refused, even as a dry run.
    let status = machine
        .apply_config(ApplyConfigRequest {
            config: NATIVE.to_vec(),
            mode: 0,
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("lock every client out"),
        "{}",
        status.message()
    );
    // With them, the dry run shows the diff against the config in force, keys redacted.
    let response = machine
        .apply_config(ApplyConfigRequest {
            config: native_with_api(&pki),
            mode: 0,
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        response.diff.contains("+hostname: applied"),
        "{}",
        response.diff
    );
    assert!(!response.diff.contains("PRIVATE KEY"), "{}", response.diff);
    assert!(
        response
            .actions
            .iter()
            .all(|action| action.starts_with("would ")),
        "{:?}",
        response.actions
    );
}

#[tokio::test]
async fn files_are_served_under_etc_and_var_but_not_the_agent_state() {
    let pki = Pki::new();
    let server = serve(ApiSecurity::mutual(&pki.api()).unwrap()).await;
    let mut files = FilesClient::new(channel(&server, &pki.tls(Role::Reader)).await.unwrap());
    let listing = files
        .list(ListRequest {
            path: "/var".into(),
            recursive: true,
        })
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = listing
        .entries
        .iter()
        .map(|entry| entry.path.as_str())
        .collect();
    assert!(paths.contains(&"/var/big"), "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|path| path.starts_with("/var/lib/keelson")),
        "{paths:?}"
    );

    let mut stream = files
        .read(ReadRequest {
            path: "/var/big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend(chunk.data);
    }
    assert_eq!(bytes, vec![7u8; 300_000]);

    for (path, reason) in [
        ("/var/lib/keelson/config/machine.yaml", "agent's own state"),
        ("/var/escape", "outside"),
        ("/proc/self/environ", "No such file"),
        ("etc/hostname", "absolute"),
    ] {
        let status = match files.read(ReadRequest { path: path.into() }).await {
            Ok(_) => panic!("{path} was served"),
            Err(status) => status,
        };
        assert!(status.message().contains(reason), "{path}: {status:?}");
    }
    drop(server.files);
}

#[tokio::test]
async fn bad_clients_do_not_affect_others() {
    let pki = Pki::new();
    let server = serve(ApiSecurity::mutual(&pki.api()).unwrap()).await;
    // A connection that never says anything holds a handshake slot, nothing more.
    let _silent = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    let mut admin = MachineClient::new(channel(&server, &pki.tls(Role::Admin)).await.unwrap());
    // An oversized message is refused…
    let oversized = admin
        .apply_config(ApplyConfigRequest {
            config: vec![b'#'; keelson_api::MAX_REQUEST_BYTES + 1],
            mode: 0,
            dry_run: true,
        })
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");
    // …and the same client and others carry on.
    admin.version(VersionRequest {}).await.unwrap();
    let mut reader = MachineClient::new(channel(&server, &pki.tls(Role::Reader)).await.unwrap());
    let version = reader
        .version(VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    // A deadline the client sets is honoured by the server.
    let mut request = tonic::Request::new(LogsRequest {
        service: "keelsond".into(),
        follow: false,
        tail: 1,
    });
    request.set_timeout(Duration::from_secs(5));
    reader.logs(request).await.unwrap();
}
