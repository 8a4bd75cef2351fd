//! Pulling from a real registry: Debian's docker-registry started on 127.0.0.1 by the
//! test, fed with an image that umoci and skopeo build from busybox-static. One registry
//! serves every check: a pull over plain HTTP (the host listed as insecure), a mirror that
//! stalls and is passed over, an unknown tag, and a plain-HTTP registry not listed as
//! insecure.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keelson_images::pull::{pull, RegistrySettings};
use keelson_images::{ImageError, ImageStore};
use keelson_testkit::oci;

/// A server that accepts connections and never answers; counts them.
fn stalling_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.read(&mut [0; 4096]);
                std::thread::sleep(Duration::from_secs(60));
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_real_registry_through_mirrors() {
    if !oci::ready_for(
        "images_are_pulled_from_a_real_registry_through_mirrors",
        true,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let registry = oci::Registry::start(work.path()).unwrap();
    let host = registry.host();
    oci::busybox_layout(work.path()).unwrap();
    registry.push(work.path(), "example/busybox:1").unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open(root.path()).unwrap());
    let mut settings = RegistrySettings {
        stall_timeout: Duration::from_secs(2),
        ..RegistrySettings::default()
    };
    settings.insecure.insert(host.clone());

    // Plain HTTP to a registry listed as insecure.
    let progress = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let record = pull(
        store.clone(),
        &format!("{host}/example/busybox:1"),
        &settings,
        move |p| seen.lock().unwrap().push(p),
    )
    .await
    .unwrap();
    assert_eq!(record.name, format!("{host}/example/busybox:1"));
    assert_eq!(record.source, format!("registry {host}"));
    let top = &store.layer_dirs(&record)[0];
    assert_eq!(
        std::fs::read(top.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    let last = progress.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.endpoint, format!("http://{host}"));
    assert!(last.total_bytes > 1_000_000, "{last:?}");
    assert_eq!(last.done_bytes, last.total_bytes);

    // A mirror that stalls is passed over for the next one.
    let (stall_port, accepted) = stalling_server();
    let stall_host = format!("127.0.0.1:{stall_port}");
    settings.insecure.insert(stall_host.clone());
    settings.mirrors.insert(
        "docker.io".into(),
        vec![format!("http://{stall_host}"), format!("http://{host}")],
    );
    store.remove(&record.name).unwrap();
    let mirrored = pull(store.clone(), "example/busybox:1", &settings, |_| {})
        .await
        .unwrap();
    assert_eq!(mirrored.name, "docker.io/example/busybox:1");
    assert_eq!(mirrored.source, format!("registry {host}"));
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the stalling mirror was never tried"
    );

    // An unknown tag: every endpoint says so, and nothing is kept.
    let blobs_before = store.store().stored_blobs().unwrap();
    let error = pull(
        store.clone(),
        &format!("{host}/example/busybox:nope"),
        &settings,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ImageError::Pull { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "cannot pull {host}/example/busybox:nope: http://{host} has no example/busybox:nope: \
             check the name and tag"
        )
    );
    assert_eq!(store.store().stored_blobs().unwrap(), blobs_before);

    // Plain HTTP is never used for a host not listed as insecure.
    settings.insecure.remove(&host);
    let error = pull(
        store.clone(),
        &format!("{host}/example/busybox:1"),
        &settings,
        |_| {},
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot pull {host}/example/busybox:1: https://{host}"
        )),
        "{text}"
    );
}

/// A private CA and a server certificate for 127.0.0.1: `(ca, cert, key)` in PEM.
fn private_tls() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keelson registry test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([
        127, 0, 0, 1,
    ]))];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A registry behind TLS (a private CA) and basic auth: pulled only with the config's CA
/// and credentials, and each refusal says which is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_a_private_ca_and_basic_auth_needs_both_from_the_config() {
    if !oci::ready_for(
        "a_registry_behind_a_private_ca_and_basic_auth_needs_both_from_the_config",
        true,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_tls();
    let secured = oci::Secured {
        cert_pem: &cert,
        key_pem: &key,
        user: "ci",
        password: "s3cret",
    };
    let registry = oci::Registry::start_secured(work.path(), &secured).unwrap();
    let host = registry.host();
    oci::busybox_layout(work.path()).unwrap();
    registry.push(work.path(), "private/busybox:1").unwrap();
    let reference = format!("{host}/private/busybox:1");

    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open(root.path()).unwrap());
    let mut settings = RegistrySettings {
        stall_timeout: Duration::from_secs(5),
        authorities: vec![ca.clone()],
        ..RegistrySettings::default()
    };

    // The CA but no credentials: refused, naming where credentials go.
    let error = pull(store.clone(), &reference, &settings, |_| {})
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "https://{host} refused access to private/busybox:1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "give credentials for {host} under registries.auth"
        )),
        "{text}"
    );

    // Credentials but not the CA: the certificate is not trusted.
    settings
        .auth
        .insert(host.clone(), ("ci".into(), "s3cret".into()));
    settings.authorities.clear();
    let error = pull(store.clone(), &reference, &settings, |_| {})
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("cannot pull {reference}: https://{host}")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // Both: pulled.
    settings.authorities = vec![ca];
    let record = pull(store.clone(), &reference, &settings, |_| {})
        .await
        .unwrap();
    assert_eq!(record.name, reference);
    assert!(store.layer_dirs(&record)[0].join("bin/busybox").is_file());
}

/// The bearer-token challenge, as Docker Hub and GHCR send it: the registry answers 401
/// with a realm; the client fetches a token there with the config's credentials and
/// retries. Without credentials the realm refuses and the error says where they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_challenge_is_answered_with_a_token_from_its_realm() {
    if !oci::ready_for(
        "a_bearer_challenge_is_answered_with_a_token_from_its_realm",
        true,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tokens = keelson_testkit::token::TokenServer::start("ci", "t0ken-pass").unwrap();
    let registry =
        oci::Registry::start_with_tokens(work.path(), &tokens, "ci", "t0ken-pass").unwrap();
    let host = registry.host();
    oci::busybox_layout(work.path()).unwrap();
    registry.push(work.path(), "private/busybox:1").unwrap();
    let reference = format!("{host}/private/busybox:1");
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open(root.path()).unwrap());
    let mut settings = RegistrySettings {
        stall_timeout: Duration::from_secs(5),
        ..RegistrySettings::default()
    };
    settings.insecure.insert(host.clone());

    let refused_before = tokens.refused();
    let error = pull(store.clone(), &reference, &settings, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!(
            "http://{host} refused access to private/busybox:1"
        )),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "give credentials for {host} under registries.auth"
        )),
        "{error}"
    );
    assert!(
        tokens.refused() > refused_before,
        "the realm was never asked"
    );

    settings
        .auth
        .insert(host.clone(), ("ci".into(), "t0ken-pass".into()));
    let issued_before = tokens.issued();
    let record = pull(store.clone(), &reference, &settings, |_| {})
        .await
        .unwrap();
    assert_eq!(record.name, reference);
    assert!(store.layer_dirs(&record)[0].join("bin/busybox").is_file());
    assert!(tokens.issued() > issued_before, "pulled without a token");
}
