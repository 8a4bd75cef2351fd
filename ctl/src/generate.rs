//! `keelctl gen`: the cluster PKI, a machine config for its nodes, and client configs.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use keelson_api::pki::{self, ClusterCa};
use keelson_api::roles::Role;
use keelson_config::model::{ApiPki, Cluster, MachineConfig};
use time::OffsetDateTime;

use crate::keelconfig::{self, Context, Keelconfig};

/// File names `gen config` writes into its directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key: keep it offline; `gen client` needs it.
pub const CA_KEY: &str = "ca.key";
/// The machine config for every node.
pub const NODE_CONFIG: &str = "node.yaml";
/// The admin's keelctl config.
pub const KEELCTL_CONFIG: &str = "keelctl.yaml";

/// What `gen config` is asked for.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Cluster name (a DNS label).
    pub cluster: String,
    /// Output directory.
    pub out: PathBuf,
    /// Node addresses keelctl will use (`host` or `host:port`).
    pub endpoints: Vec<String>,
    /// Overwrite existing files.
    pub force: bool,
    /// The format of the node config.
    pub format: NodeFormat,
}

/// The format `gen config` writes the node config in: whatever the user's provisioning
/// tooling speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NodeFormat {
    /// A Keelson `MachineConfig` (`node.yaml`).
    #[default]
    Native,
    /// Ignition v3 JSON (`node.ign`), the API credentials as `storage.files`.
    Ignition,
    /// cloud-init user-data (`user-data`), the API credentials as `write_files`.
    CloudConfig,
}

impl NodeFormat {
    /// The file the node config is written to.
    pub fn file_name(self) -> &'static str {
        match self {
            NodeFormat::Native => NODE_CONFIG,
            NodeFormat::Ignition => "node.ign",
            NodeFormat::CloudConfig => "user-data",
        }
    }
}

/// The node config in `format`. Ignition and cloud-init have no place for Keelson's
/// `cluster` section: their node configs carry the API credentials (as the files
/// `keelson_config` takes them from) and leave the cluster to a native config.
pub fn node_config_text(config: &MachineConfig, format: NodeFormat) -> anyhow::Result<String> {
    let api = config.api.as_ref();
    Ok(match format {
        NodeFormat::Native => keelson_config::native::to_yaml(config),
        NodeFormat::Ignition => {
            let files = api.map(ignition_api_files).unwrap_or_default();
            let document = serde_json::json!({
                "ignition": { "version": "3.4.0" },
                "storage": { "files": files },
            });
            format!("{}\n", serde_json::to_string_pretty(&document)?)
        }
        NodeFormat::CloudConfig => {
            let files = api.map(cloud_config_api_files).unwrap_or_default();
            let document = serde_json::json!({ "write_files": files });
            format!("#cloud-config\n{}", serde_yaml::to_string(&document)?)
        }
    })
}

/// A file to write and whether it holds a secret (mode 0600, else 0644).
struct Output {
    name: String,
    contents: String,
    secret: bool,
}

fn host_of(endpoint: &str) -> anyhow::Result<String> {
    let address = keelconfig::node_address(endpoint)?;
    let (host, _) = address
        .rsplit_once(':')
        .with_context(|| format!("{endpoint:?} has no host"))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

fn random_secret() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Writes every output, or none: existing files are refused (unless `force`) before
/// anything is written.
fn write_outputs(
    directory: &Path,
    outputs: &[Output],
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let existing: Vec<String> = outputs
        .iter()
        .map(|output| directory.join(&output.name))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    if !existing.is_empty() && !force {
        bail!(
            "refusing to overwrite {} (pass --force to replace them)",
            existing.join(", ")
        );
    }
    std::fs::create_dir_all(directory)
        .with_context(|| format!("cannot create {}", directory.display()))?;
    let mut written = Vec::new();
    for output in outputs {
        let path = directory.join(&output.name);
        let mode = if output.secret { 0o600 } else { 0o644 };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // An existing file keeps its old mode through open(2); set it explicitly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(output.contents.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `keelctl gen config`: returns the files written.
pub fn gen_config(request: &GenConfig, now: OffsetDateTime) -> anyhow::Result<Vec<PathBuf>> {
    pki::check_cluster_name(&request.cluster).map_err(anyhow::Error::msg)?;
    let mut names = vec![pki::node_server_name(&request.cluster)];
    for endpoint in &request.endpoints {
        let host = host_of(endpoint)?;
        if !names.contains(&host) {
            names.push(host);
        }
    }
    // Port forwards and tunnels reach nodes through the loopback address.
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|name| name == local) {
            names.push(local.to_owned());
        }
    }
    let ca = ClusterCa::generate(&request.cluster, now)?;
    let node = ca.issue_node(&names, now)?;
    let admin = ca.issue_client(
        "admin",
        Role::Admin,
        now - pki::CLOCK_SKEW,
        now + pki::CLIENT_VALIDITY,
    )?;

    let mut config = MachineConfig::empty();
    config.cluster = Some(Cluster::new(request.cluster.clone(), random_secret()?));
    config.api = Some(ApiPki {
        ca: ca.certified().cert_pem.clone(),
        cert: node.cert_pem,
        key: node.key_pem,
    });
    let keelctl = Keelconfig {
        context: request.cluster.clone(),
        contexts: BTreeMap::from([(
            request.cluster.clone(),
            Context {
                endpoints: request.endpoints.clone(),
                server_name: pki::node_server_name(&request.cluster),
                ca: ca.certified().cert_pem.clone(),
                cert: admin.cert_pem,
                key: admin.key_pem,
            },
        )]),
    };
    let outputs = [
        Output {
            name: CA_CERT.into(),
            contents: ca.certified().cert_pem.clone(),
            secret: false,
        },
        Output {
            name: CA_KEY.into(),
            contents: ca.certified().key_pem.clone(),
            secret: true,
        },
        Output {
            name: request.format.file_name().into(),
            contents: node_config_text(&config, request.format)?,
            secret: true,
        },
        Output {
            name: KEELCTL_CONFIG.into(),
            contents: keelctl.to_yaml()?,
            secret: true,
        },
    ];
    write_outputs(&request.out, &outputs, request.force)
}

/// The API credentials as the three files Ignition and cloud-init configs carry them in
/// (path, contents, mode).
pub fn api_files(api: &ApiPki) -> [(&'static str, &str, u32); 3] {
    use keelson_config::plan::{API_CA_FILE, API_CERT_FILE, API_KEY_FILE};
    [
        (API_CA_FILE, api.ca.as_str(), 0o644),
        (API_CERT_FILE, api.cert.as_str(), 0o644),
        (API_KEY_FILE, api.key.as_str(), 0o600),
    ]
}

/// Ignition `storage.files` entries carrying the API credentials.
pub fn ignition_api_files(api: &ApiPki) -> Vec<serde_json::Value> {
    api_files(api)
        .iter()
        .map(|(path, contents, mode)| {
            serde_json::json!({
                "path": path,
                "mode": mode,
                "contents": {
                    "source": format!(
                        "data:;base64,{}",
                        base64::engine::general_purpose::STANDARD.encode(contents)
                    )
                }
            })
        })
        .collect()
}

/// cloud-config `write_files` entries carrying the API credentials.
pub fn cloud_config_api_files(api: &ApiPki) -> Vec<serde_json::Value> {
    api_files(api)
        .iter()
        .map(|(path, contents, mode)| {
            serde_json::json!({
                "path": path,
                "permissions": format!("0{mode:o}"),
                "encoding": "b64",
                "content": base64::engine::general_purpose::STANDARD.encode(contents),
            })
        })
        .collect()
}

/// What `gen client` is asked for.
#[derive(Debug, Clone)]
pub struct GenClient {
    /// The `gen config` directory (its CA and keelctl.yaml).
    pub pki: PathBuf,
    /// Common name of the new certificate.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Validity in days.
    pub days: u32,
    /// The keelctl config to write.
    pub out: PathBuf,
    /// Overwrite an existing file.
    pub force: bool,
}

/// `keelctl gen client`: a keelctl config for a new identity; returns the file written.
pub fn gen_client(request: &GenClient, now: OffsetDateTime) -> anyhow::Result<PathBuf> {
    let read = |name: &str| {
        let path = request.pki.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (the directory `keelctl gen config` wrote)",
                path.display()
            )
        })
    };
    let ca = ClusterCa::load(&read(CA_CERT)?, &read(CA_KEY)?)?;
    let admin = Keelconfig::load(&request.pki.join(KEELCTL_CONFIG))?;
    let template = admin.select(None)?;
    let not_after = now + time::Duration::days(i64::from(request.days));
    let client = ca.issue_client(
        &request.name,
        request.role,
        now - pki::CLOCK_SKEW,
        not_after,
    )?;
    let context_name = format!("{}-{}", admin.context, request.name);
    let config = Keelconfig {
        context: context_name.clone(),
        contexts: BTreeMap::from([(
            context_name,
            Context {
                cert: client.cert_pem,
                key: client.key_pem,
                ..template.clone()
            },
        )]),
    };
    let directory = request
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = request
        .out
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} is not a file name", request.out.display()))?;
    let written = write_outputs(
        directory,
        &[Output {
            name: name.to_owned(),
            contents: config.to_yaml()?,
            secret: true,
        }],
        request.force,
    )?;
    Ok(written.into_iter().next().unwrap_or_default())
}

/// `keelctl gen config|client`.
pub fn run(command: &crate::cli::GenCommand) -> anyhow::Result<bool> {
    let now = time::OffsetDateTime::now_utc();
    match command {
        crate::cli::GenCommand::Config(arguments) => {
            let written = gen_config(
                &GenConfig {
                    cluster: arguments.cluster.clone(),
                    out: arguments.out.clone(),
                    endpoints: arguments.endpoints.clone(),
                    force: arguments.force,
                    format: arguments.format,
                },
                now,
            )?;
            for path in &written {
                println!("wrote {}", path.display());
            }
            println!(
                "next: boot nodes with {} (e.g. keelson-qemu --config), then \
                 export KEELCONFIG={} and run keelctl status",
                arguments.out.join(arguments.format.file_name()).display(),
                arguments.out.join(KEELCTL_CONFIG).display()
            );
        }
        crate::cli::GenCommand::Client(arguments) => {
            let written = gen_client(
                &GenClient {
                    pki: arguments.pki.clone(),
                    name: arguments.name.clone(),
                    role: arguments.role,
                    days: arguments.days,
                    out: arguments.out.clone(),
                    force: arguments.force,
                },
                now,
            )?;
            println!(
                "wrote {} ({} {})",
                written.display(),
                arguments.role,
                arguments.name
            );
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Each format goes through the node's own parser and yields the same API credentials,
    /// so an Ignition or cloud-init node comes up with the API instead of waiting in
    /// maintenance mode.
    #[test]
    fn every_format_carries_the_api_credentials_the_node_takes() {
        let directory = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        for (format, detected) in [
            (NodeFormat::Native, keelson_config::Format::Native),
            (NodeFormat::Ignition, keelson_config::Format::Ignition),
            (NodeFormat::CloudConfig, keelson_config::Format::CloudConfig),
        ] {
            let out = directory.path().join(format.file_name());
            let request = GenConfig {
                cluster: "lab".into(),
                out: out.clone(),
                endpoints: Vec::new(),
                force: false,
                format,
            };
            gen_config(&request, now).unwrap();
            let bytes = std::fs::read(out.join(format.file_name())).unwrap();
            let loaded = keelson_config::load(format.file_name(), &bytes).unwrap();
            assert_eq!(loaded.format, detected);
            assert_eq!(loaded.warnings, Vec::new(), "{format:?}");
            let api = loaded.plan.api.expect("API credentials");
            keelson_api::tls::mutual_server_config(&api.ca, &api.cert, &api.key).unwrap();
            let ca = std::fs::read_to_string(out.join(CA_CERT)).unwrap();
            assert_eq!(api.ca, ca, "{format:?}");
        }
    }

    #[test]
    fn gen_config_writes_secrets_0600_and_refuses_to_overwrite() {
        let directory = tempfile::tempdir().unwrap();
        let request = GenConfig {
            cluster: "lab".into(),
            out: directory.path().join("pki"),
            endpoints: vec!["10.0.0.5".into()],
            force: false,
            format: Default::default(),
        };
        let now = OffsetDateTime::now_utc();
        let written = gen_config(&request, now).unwrap();
        assert_eq!(written.len(), 4);
        for path in &written {
            let mode = std::fs::metadata(path).unwrap().mode() & 0o777;
            let secret = !path.ends_with(CA_CERT);
            assert_eq!(
                mode,
                if secret { 0o600 } else { 0o644 },
                "{}",
                path.display()
            );
        }
        let node = std::fs::read(request.out.join(NODE_CONFIG)).unwrap();
        let loaded = keelson_config::load("node.yaml", &node).unwrap();
        let api = loaded.plan.api.unwrap();
        keelson_api::tls::mutual_server_config(&api.ca, &api.cert, &api.key).unwrap();

        let before = std::fs::read(request.out.join(CA_KEY)).unwrap();
        let error = gen_config(&request, now).unwrap_err().to_string();
        assert!(error.contains("refusing to overwrite"), "{error}");
        assert_eq!(std::fs::read(request.out.join(CA_KEY)).unwrap(), before);
        gen_config(
            &GenConfig {
                force: true,
                ..request.clone()
            },
            now,
        )
        .unwrap();
        assert_ne!(std::fs::read(request.out.join(CA_KEY)).unwrap(), before);

        let reader = gen_client(
            &GenClient {
                pki: request.out.clone(),
                name: "ci".into(),
                role: Role::Reader,
                days: 1,
                out: directory.path().join("reader.yaml"),
                force: false,
            },
            now,
        )
        .unwrap();
        let config = Keelconfig::load(&reader).unwrap();
        let context = config.select(None).unwrap();
        let der = pki::certificate_der("reader", &context.cert).unwrap();
        assert_eq!(pki::subject(&der).unwrap().role, Some(Role::Reader));
        assert_eq!(context.endpoints, ["10.0.0.5"]);
    }

    #[test]
    fn ignition_and_cloud_config_carry_the_api_credentials_as_files() {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::generate("lab", now).unwrap();
        let node = ca.issue_node(&[pki::node_server_name("lab")], now).unwrap();
        let api = ApiPki {
            ca: ca.certified().cert_pem.clone(),
            cert: node.cert_pem,
            key: node.key_pem,
        };
        let ignition = serde_json::json!({
            "ignition": {"version": "3.4.0"},
            "storage": {"files": ignition_api_files(&api)}
        });
        let cloud_config = format!(
            "#cloud-config\n{}",
            serde_yaml::to_string(&serde_json::json!({
                "hostname": "n1",
                "write_files": cloud_config_api_files(&api)
            }))
            .unwrap()
        );
        for bytes in [ignition.to_string().into_bytes(), cloud_config.into_bytes()] {
            let loaded = keelson_config::load("test", &bytes).unwrap();
            assert_eq!(loaded.plan.api.as_ref(), Some(&api));
            assert!(
                loaded.plan.files.is_empty(),
                "credentials are never written as files"
            );
            let diff = keelson_config::change::compare(None, &loaded.config).diff;
            assert!(!diff.contains("PRIVATE KEY"), "{diff}");
        }
        // Two of three is an error that names the missing one.
        let partial = serde_json::json!({
            "ignition": {"version": "3.4.0"},
            "storage": {"files": ignition_api_files(&api)[..2]}
        });
        let rejected = keelson_config::load("test", partial.to_string().as_bytes()).unwrap_err();
        let errors: Vec<String> = rejected.errors().map(ToString::to_string).collect();
        assert!(errors.iter().any(|e| e.contains("node.key")), "{errors:?}");
    }
}
