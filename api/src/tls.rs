//! rustls configurations for both ends of the API: TLS 1.3 only, ring provider, ALPN h2.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::pki::{self, CertifiedKey};

/// Bad TLS material, naming which.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct TlsError {
    /// Which input (`api.cert`, the client key, …).
    pub what: String,
    /// Why it cannot be used.
    pub reason: String,
}

fn invalid(what: &str) -> impl FnOnce(String) -> TlsError + '_ {
    move |reason| TlsError {
        what: what.to_owned(),
        reason,
    }
}

/// The ring provider, the only one Keelson uses, with its cipher suites in the order
/// that is fastest on this CPU (see [`suites_for`]).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites_for(provider.cipher_suites, has_aes_hardware());
    Arc::new(provider)
}

/// `suites` ordered for a CPU with or without AES instructions. With them AES-GCM comes
/// first, as ring lists it. Without them ChaCha20-Poly1305 does: there software AES-GCM is
/// about eight times slower (9 against 83 MB/s under QEMU's TCG), which bounds how fast a
/// bundle uploads through the API. Go's TLS and BoringSSL choose the same way.
pub fn suites_for(
    mut suites: Vec<rustls::SupportedCipherSuite>,
    aes_hardware: bool,
) -> Vec<rustls::SupportedCipherSuite> {
    if !aes_hardware {
        // A stable sort: the order within each group stays ring's.
        suites.sort_by_key(|suite| {
            !matches!(
                suite.suite(),
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
    }
    suites
}

/// True when the CPU has the instructions that make AES-GCM fast (AES and carry-less
/// multiplication).
pub fn has_aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A node without AES instructions picks ChaCha20-Poly1305 even when the client lists
/// AES-GCM first (a client with AES hardware does): the node is the slow end.
fn prefer_own_order(config: &mut ServerConfig) {
    config.ignore_client_order = !has_aes_hardware();
}

/// The certificates in a PEM text (at least one).
pub fn certificates(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(what)(format!("unreadable PEM: {error:?}")))?;
    if chain.is_empty() {
        return Err(invalid(what)("holds no CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// The private key in a PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn private_key(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| invalid(what)(format!("holds no usable private key: {error:?}")))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates("api.ca", ca_pem)? {
        roots
            .add(certificate)
            .map_err(|error| invalid("api.ca")(error.to_string()))?;
    }
    Ok(roots)
}

/// The node side of mutual TLS: serve `cert`/`key`, require a client certificate signed
/// by `ca` and currently valid.
pub fn mutual_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ServerConfig, TlsError> {
    pki::check_signed_by(cert_pem, ca_pem)
        .map_err(|error| invalid("api.cert")(error.to_string()))?;
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .build()
            .map_err(|error| invalid("api.ca")(error.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| invalid("TLS versions")(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates("api.cert", cert_pem)?,
            private_key("api.key", key_pem)?,
        )
        .map_err(|error| invalid("api.key")(format!("does not go with api.cert: {error}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    prefer_own_order(&mut config);
    Ok(config)
}

/// The node side in maintenance mode: a self-signed certificate, no client certificate
/// asked for (the token authenticates).
pub fn maintenance_server_config(certified: &CertifiedKey) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| invalid("TLS versions")(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            certificates("maintenance certificate", &certified.cert_pem)?,
            private_key("maintenance key", &certified.key_pem)?,
        )
        .map_err(|error| invalid("maintenance key")(error.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    prefer_own_order(&mut config);
    Ok(config)
}

/// The client side of mutual TLS: trust only `ca`, present `cert`/`key`.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| invalid("TLS versions")(error.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            certificates("client certificate", cert_pem)?,
            private_key("client key", key_pem)?,
        )
        .map_err(|error| {
            invalid("client key")(format!("does not go with the certificate: {error}"))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side towards a node in maintenance mode: its certificate is self-signed,
/// so it is accepted as is, or only if its SHA-256 fingerprint is `pinned` (as printed on
/// the node's console).
pub fn maintenance_client_config(pinned: Option<String>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = MaintenanceVerifier {
        pinned: pinned.map(|pin| pin.to_ascii_lowercase().replace(':', "")),
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| invalid("TLS versions")(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts any server certificate (or only the pinned one) but still checks that the
/// server holds its key.
#[derive(Debug)]
struct MaintenanceVerifier {
    pinned: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MaintenanceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if *pinned != pki::fingerprint(end_entity) => {
                Err(rustls::Error::General(format!(
                    "the node's certificate has fingerprint {}, not the pinned {pinned}",
                    pki::fingerprint(end_entity)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The check a node makes of a machine config beyond `keelson_config::load`: its API
/// certificates must build a mutual-TLS server (they parse, the key goes with the
/// certificate, the certificate is signed by the CA), so that bad material is a config
/// error rather than an API that cannot start. Shared by the node and `keelctl validate`, so that both refuse the
/// same configs with the same words.
pub fn check_config_pki(
    location: &str,
    loaded: keelson_config::Loaded,
) -> Result<keelson_config::Loaded, keelson_config::Rejected> {
    let Some(api) = &loaded.plan.api else {
        return Ok(loaded);
    };
    match mutual_server_config(&api.ca, &api.cert, &api.key) {
        Ok(_) => Ok(loaded),
        Err(error) => {
            let mut diagnostics = loaded.warnings.clone();
            diagnostics.push(keelson_config::Diagnostic::error(
                location,
                &error.what,
                error.reason,
            ));
            Err(keelson_config::Rejected { diagnostics })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite;

    fn first_suite(aes_hardware: bool) -> CipherSuite {
        let suites = rustls::crypto::ring::default_provider().cipher_suites;
        suites_for(suites, aes_hardware)[0].suite()
    }

    #[test]
    fn without_aes_instructions_chacha20_comes_first() {
        assert_eq!(
            first_suite(false),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
    }

    #[test]
    fn with_aes_instructions_aes_gcm_stays_first() {
        assert!(format!("{:?}", first_suite(true)).contains("AES"));
    }

    #[test]
    fn reordering_keeps_every_suite() {
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        let count = all.len();
        assert_eq!(suites_for(all, false).len(), count);
    }
}
