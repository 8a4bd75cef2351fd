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

/// The ring provider, the only one Keelson uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
