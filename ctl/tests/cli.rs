//! The keelctl binary as an operator runs it: exit codes, one-line errors, files it writes.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};

fn keelctl(arguments: &[&str], keelconfig: Option<&std::path::Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keelctl"));
    command.args(arguments).env_remove("KEELCONFIG");
    if let Some(path) = keelconfig {
        command.env("KEELCONFIG", path);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn gen_config_writes_the_cluster_and_refuses_to_overwrite_it() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("lab");
    let out_arg = out.to_str().unwrap();
    let arguments = [
        "gen",
        "config",
        "--cluster",
        "lab",
        "--out",
        out_arg,
        "--endpoint",
        "10.0.0.5",
    ];
    let first = keelctl(&arguments, None);
    assert!(first.status.success(), "{}", stderr(&first));
    for (name, mode) in [
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("node.yaml", 0o600),
        ("keelctl.yaml", 0o600),
    ] {
        let metadata = std::fs::metadata(out.join(name)).unwrap();
        assert_eq!(metadata.mode() & 0o777, mode, "{name}");
    }
    let again = keelctl(&arguments, None);
    assert!(!again.status.success());
    let error = stderr(&again);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.starts_with("error: refusing to overwrite"), "{error}");

    // A node that is not there: one line naming it, exit code 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = closed.to_string();
    let status = keelctl(&["status", "-n", &node], Some(&out.join("keelctl.yaml")));
    assert!(!status.status.success());
    let error = stderr(&status);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with(&format!("error: {node}: cannot connect")),
        "{error}"
    );
}

#[test]
fn an_invalid_config_is_reported_before_any_node_is_contacted() {
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("bad.yaml");
    std::fs::write(
        &config,
        "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nhostname: -bad-\n",
    )
    .unwrap();
    let output = keelctl(
        &[
            "apply-config",
            "--insecure",
            "--token",
            "t",
            "-n",
            "192.0.2.1",
            "-f",
            config.to_str().unwrap(),
        ],
        None,
    );
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(error.contains("hostname"), "{error}");
    assert!(error.contains("no node was contacted"), "{error}");
}

#[test]
fn without_a_keelctl_config_the_error_says_how_to_make_one() {
    let directory = tempfile::tempdir().unwrap();
    let missing = directory.path().join("none.yaml");
    let output = keelctl(&["status"], Some(&missing));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("keelctl gen config"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn shell_completion_is_generated() {
    let output = keelctl(&["completion", "bash"], None);
    assert!(output.status.success());
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(
        script.contains("keelctl") && script.contains("apply-config"),
        "{script}"
    );
}

fn fixture(name: &str) -> String {
    format!("{}/../tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `validate` refuses exactly what the e2e tests see a node refuse, in the node's words,
/// and exits 1; it accepts what `gen config` writes and exits 0.
#[test]
fn validate_checks_a_config_as_the_node_does() {
    for (file, fields) in [
        (
            "invalid/native.yaml",
            &["network.interfaces[0].addresses[0]", "files[0].mode"][..],
        ),
        (
            "invalid/outside-tree.ign.json",
            &["storage.files[1].path"][..],
        ),
        ("invalid/cloud-config.yaml", &["write_files[1].content"][..]),
    ] {
        let path = fixture(file);
        let output = keelctl(&["validate", "-f", &path], None);
        assert_eq!(output.status.code(), Some(1), "{file}: {}", stderr(&output));
        let printed = stdout(&output);
        for field in fields {
            let line = format!("error: {path}: {field}: ");
            assert!(printed.contains(&line), "{line:?} not in:\n{printed}");
        }
        let last = printed.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("{path}: a node would refuse this ")),
            "{last}"
        );
    }

    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("lab");
    let generated = keelctl(
        &[
            "gen",
            "config",
            "--cluster",
            "lab",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(generated.status.success(), "{}", stderr(&generated));
    let node = out.join("node.yaml");
    let output = keelctl(&["validate", "-f", node.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        format!("{}: valid native config", node.display())
    );

    let json = keelctl(
        &[
            "-o",
            "json",
            "validate",
            "-f",
            &fixture("invalid/native.yaml"),
        ],
        None,
    );
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["valid"], false);
    assert_eq!(value["format"], "native");
    assert_eq!(
        value["errors"].as_array().map(Vec::len),
        Some(2),
        "{value:#}"
    );
}
