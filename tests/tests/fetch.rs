//! Host tests of the node's fetches against real HTTP and HTTPS servers on 127.0.0.1: the
//! trust an `https://` fetch puts in the root's bundle and a config's authorities, and an
//! Ignition pointer config resolved through them as the node resolves it at boot.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use keelson_provision::fetch::{self, Trust};
use keelson_tests::http::{HttpServer, Reply, TlsIdentity};
use serde_json::json;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT: Duration = Duration::from_secs(10);

fn serve(identity: &TlsIdentity, files: Vec<(&'static str, Vec<u8>)>) -> HttpServer {
    HttpServer::start_tls(identity, move |request| {
        match files.iter().find(|(path, _)| *path == request.path) {
            Some((_, body)) => Reply::Bytes(200, body.clone()),
            None => Reply::Bytes(404, b"not found".to_vec()),
        }
    })
}

/// No bundle: only what the test names is trusted.
fn trusting(authorities: &[String]) -> Trust {
    Trust::new(Path::new("/nonexistent/bundle.crt"), authorities).unwrap()
}

#[test]
fn an_https_fetch_trusts_the_authorities_a_config_names_and_no_other() {
    let identity = TlsIdentity::new(&[LOOPBACK]);
    let server = serve(&identity, vec![("/motd", b"over TLS\n".to_vec())]);
    let url = format!("https://127.0.0.1:{}/motd", server.port);

    let trusted = trusting(std::slice::from_ref(&identity.ca_pem));
    assert_eq!(
        fetch::get_blocking(&url, TIMEOUT, 1 << 20, &trusted).unwrap(),
        b"over TLS\n"
    );

    // Neither nothing nor Mozilla's roots vouch for a private CA; the error says what to do.
    for trust in [trusting(&[]), Trust::system_and(&[]).unwrap()] {
        let error = fetch::get_blocking(&url, TIMEOUT, 1 << 20, &trust).unwrap_err();
        assert!(error.starts_with(&format!("GET {url} failed: ")), "{error}");
        assert!(
            error.contains("add the server's CA to certificateAuthorities"),
            "{error}"
        );
    }

    // Another CA's certificate is no substitute.
    let stranger = TlsIdentity::new(&[LOOPBACK]);
    let error =
        fetch::get_blocking(&url, TIMEOUT, 1 << 20, &trusting(&[stranger.ca_pem])).unwrap_err();
    assert!(error.contains("certificate"), "{error}");
}

#[test]
fn a_config_authority_that_is_not_a_certificate_is_named() {
    let error = Trust::new(
        Path::new("/nonexistent/bundle.crt"),
        &["-----BEGIN PRIVATE KEY-----\nTUlJQg==\n-----END PRIVATE KEY-----\n".into()],
    )
    .unwrap_err();
    assert_eq!(error, "certificate authority 0: holds no certificate");
}

#[test]
fn a_pointer_config_is_replaced_over_https_and_merged_over_http() {
    let identity = TlsIdentity::new(&[LOOPBACK]);
    let extra = json!({
        "ignition": { "version": "3.0.0" },
        "storage": { "files": [
            { "path": "/etc/merged", "contents": { "source": "data:,from%20the%20merge" } }
        ] }
    });
    let plain = HttpServer::start(move |request| match request.path.as_str() {
        "/extra.ign" => Reply::Bytes(200, extra.to_string().into_bytes()),
        _ => Reply::Bytes(404, b"not found".to_vec()),
    });
    let replacement = json!({
        "ignition": {
            "version": "3.4.0",
            "config": { "merge": [
                { "source": format!("http://127.0.0.1:{}/extra.ign", plain.port) }
            ] }
        },
        "storage": { "files": [
            { "path": "/etc/hostname", "contents": { "source": "data:,pointed" } }
        ] }
    })
    .to_string()
    .into_bytes();
    let hash = format!(
        "sha512-{}",
        hex_digest(ring::digest::digest(&ring::digest::SHA512, &replacement).as_ref())
    );
    let secure = serve(&identity, vec![("/node.ign", replacement)]);
    let pointer = json!({
        "ignition": {
            "version": "3.4.0",
            "config": { "replace": {
                "source": format!("https://127.0.0.1:{}/node.ign", secure.port),
                "verification": { "hash": hash }
            } },
            "security": { "tls": { "certificateAuthorities": [
                { "source": format!("data:;base64,{}", base64(identity.ca_pem.as_bytes())) }
            ] } }
        }
    })
    .to_string();

    let mut fetch = |request: &keelson_config::ignition::resolve::FetchRequest| {
        let trust = trusting(&request.authorities);
        fetch::get_blocking(&request.url, TIMEOUT, 1 << 20, &trust)
    };
    let resolved =
        keelson_config::ignition::resolve::resolve("pointer", pointer.as_bytes(), &mut fetch)
            .unwrap();
    assert_eq!(resolved.fetched.len(), 2, "{:?}", resolved.fetched);
    let loaded = keelson_config::load("pointer", &resolved.document).unwrap();
    assert_eq!(loaded.plan.hostname.as_deref(), Some("pointed"));
    let merged = loaded
        .plan
        .files
        .iter()
        .find(|file| file.path == Path::new("/etc/merged"))
        .expect("the merged config's file");
    assert_eq!(
        merged.contents,
        keelson_config::plan::Contents::Inline(b"from the merge".to_vec())
    );

    // Without the pointer's authority the replacement cannot be fetched, and the whole
    // config is refused naming the field.
    let untrusting = pointer.replace("certificateAuthorities", "certificateAuthoritiesX");
    let mut fetch = |request: &keelson_config::ignition::resolve::FetchRequest| {
        fetch::get_blocking(
            &request.url,
            TIMEOUT,
            1 << 20,
            &trusting(&request.authorities),
        )
    };
    let rejected =
        keelson_config::ignition::resolve::resolve("pointer", untrusting.as_bytes(), &mut fetch)
            .unwrap_err();
    let error = rejected.errors().next().unwrap();
    assert_eq!(error.field, "ignition.config.replace");
    assert!(
        error.reason.contains("add the server's CA"),
        "{}",
        error.reason
    );
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
