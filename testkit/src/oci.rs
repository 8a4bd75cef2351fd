//! Real OCI images for tests, made the way a user makes them: umoci builds an image
//! layout from Debian's busybox-static, skopeo copies it into an OCI or Docker archive.
//! Nothing is downloaded from a registry.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools the images need, and the packages that bring them.
pub const TOOLS: &[(&str, &str)] = &[
    ("umoci", "umoci"),
    ("skopeo", "skopeo"),
    ("/bin/busybox", "busybox-static"),
];

/// The Debian packages of the tools this machine lacks (empty when all are there).
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .filter(|(tool, _)| {
            let found = if tool.starts_with('/') {
                Path::new(tool).exists()
            } else {
                Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok_and(|output| output.status.success())
            };
            !found
        })
        .map(|(_, package)| *package)
        .collect()
}

fn run(program: &str, arguments: &[&str], directory: &Path) -> Result<(), String> {
    let output = Command::new(program)
        .args(arguments)
        .current_dir(directory)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Builds the OCI layout `DIR/layout:busybox`: `/bin/busybox`, `/bin/sh` linking to it,
/// and `/bin/sh` as the command. umoci needs root to unpack.
pub fn busybox_layout(directory: &Path) -> Result<(), String> {
    run("umoci", &["init", "--layout", "layout"], directory)?;
    run("umoci", &["new", "--image", "layout:busybox"], directory)?;
    run(
        "umoci",
        &["unpack", "--image", "layout:busybox", "bundle"],
        directory,
    )?;
    let bin = directory.join("bundle/rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(|error| error.to_string())?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(|error| error.to_string())?;
    std::os::unix::fs::symlink("busybox", bin.join("sh")).map_err(|error| error.to_string())?;
    run(
        "umoci",
        &["repack", "--image", "layout:busybox", "bundle"],
        directory,
    )?;
    run(
        "umoci",
        &[
            "config",
            "--image",
            "layout:busybox",
            "--config.cmd",
            "/bin/sh",
        ],
        directory,
    )
}

/// The two archive formats skopeo writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// `oci-archive:` (the name goes into `org.opencontainers.image.ref.name`).
    Oci,
    /// `docker-archive:` (the name goes into `RepoTags`).
    Docker,
}

/// Copies the layout made by [`busybox_layout`] into `DIR/FILE` as an archive naming the
/// image `name`.
pub fn archive(
    directory: &Path,
    kind: ArchiveKind,
    file: &str,
    name: &str,
) -> Result<PathBuf, String> {
    let transport = match kind {
        ArchiveKind::Oci => "oci-archive",
        ArchiveKind::Docker => "docker-archive",
    };
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "oci:layout:busybox",
            &format!("{transport}:{file}:{name}"),
        ],
        directory,
    )?;
    Ok(directory.join(file))
}

/// A real registry (Debian's docker-registry) serving on 127.0.0.1 from a directory;
/// killed when dropped.
pub struct Registry {
    child: std::process::Child,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The one user a secured registry accepts.
    credentials: Option<(String, String)>,
}

/// How a registry is secured: TLS with this certificate and key (PEM), and basic auth for
/// one user.
pub struct Secured<'a> {
    /// The server certificate (PEM).
    pub cert_pem: &'a str,
    /// Its key (PEM).
    pub key_pem: &'a str,
    /// The user.
    pub user: &'a str,
    /// Their password.
    pub password: &'a str,
}

impl Registry {
    /// Starts a registry storing under `directory`, and waits until it accepts connections.
    pub fn start(directory: &Path) -> Result<Registry, String> {
        Registry::start_with(directory, None)
    }

    /// Starts a registry behind TLS and basic auth (users written by htpasswd, bcrypt).
    pub fn start_secured(directory: &Path, secured: &Secured<'_>) -> Result<Registry, String> {
        Registry::start_with(directory, Some(secured))
    }

    /// Starts a registry (plain HTTP) that demands bearer tokens from `tokens`; pushes use
    /// `user` and `password`, which the token server accepts.
    pub fn start_with_tokens(
        directory: &Path,
        tokens: &crate::token::TokenServer,
        user: &str,
        password: &str,
    ) -> Result<Registry, String> {
        let bundle = directory.join("token-signer.crt");
        std::fs::write(&bundle, &tokens.cert_pem).map_err(|error| error.to_string())?;
        let auth = format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.realm(),
            tokens.service,
            tokens.issuer,
            bundle.display()
        );
        let mut registry = Registry::start_configured(directory, None, &auth)?;
        registry.credentials = Some((user.to_owned(), password.to_owned()));
        Ok(registry)
    }

    fn start_with(directory: &Path, secured: Option<&Secured<'_>>) -> Result<Registry, String> {
        Registry::start_configured(directory, secured, "")
    }

    fn start_configured(
        directory: &Path,
        secured: Option<&Secured<'_>>,
        extra: &str,
    ) -> Result<Registry, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| error.to_string())?
            .port();
        let config = directory.join("registry.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            directory.join("registry-data").display()
        );
        if let Some(secured) = secured {
            let write = |name: &str, text: &str| {
                std::fs::write(directory.join(name), text).map_err(|error| error.to_string())
            };
            write("registry.crt", secured.cert_pem)?;
            write("registry.key", secured.key_pem)?;
            let output = Command::new("htpasswd")
                .args(["-Bbn", secured.user, secured.password])
                .output()
                .map_err(|error| format!("htpasswd: {error} (apt-get install apache2-utils)"))?;
            write("htpasswd", &String::from_utf8_lossy(&output.stdout))?;
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: keelson-test\n    path: {}\n",
                directory.join("registry.crt").display(),
                directory.join("registry.key").display(),
                directory.join("htpasswd").display()
            ));
        }
        yaml.push_str(extra);
        std::fs::write(&config, yaml).map_err(|error| error.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|error| format!("docker-registry: {error}"))?;
        let registry = Registry {
            child,
            port,
            credentials: secured.map(|s| (s.user.to_owned(), s.password.to_owned())),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err("the registry did not start within 30 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the layout made by [`busybox_layout`] in `directory` as `repository:tag`.
    pub fn push(&self, directory: &Path, repository_and_tag: &str) -> Result<(), String> {
        let target = format!("docker://{}/{repository_and_tag}", self.host());
        let mut arguments = vec!["copy", "-q", "--dest-tls-verify=false"];
        let credentials = self
            .credentials
            .as_ref()
            .map(|(user, password)| format!("{user}:{password}"));
        if let Some(credentials) = &credentials {
            arguments.extend(["--dest-creds", credentials]);
        }
        arguments.extend(["oci:layout:busybox", &target]);
        run("skopeo", &arguments, directory)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when docker-registry is installed.
pub fn has_registry() -> bool {
    Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// What a test that builds images needs: the tools (and a registry when `registry`) and
/// root (umoci unpacks as root; layer owners need it). Skips `test` loudly and returns
/// false when something is missing.
pub fn ready_for(test: &str, registry: bool) -> bool {
    let mut missing = missing_tools();
    if registry && !has_registry() {
        missing.push("docker-registry");
    }
    if !missing.is_empty() {
        crate::skip(test, &format!("apt-get install {}", missing.join(" ")));
        return false;
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        crate::skip(
            test,
            "building OCI images with umoci and unpacking layers need root",
        );
        return false;
    }
    true
}
