//! The cluster PKI: a CA, node (server) certificates and role-bearing client
//! certificates, all ECDSA P-256 (rcgen over ring).
//!
//! A client's role is its subject organisation, `keelson:<role>`, as Kubernetes and Talos
//! carry groups. Nodes are verified under one name per cluster ([`node_server_name`])
//! rather than their addresses, which DHCP may change after the configs are generated;
//! the node certificate also names every endpoint given at generation time, so tools that
//! verify by address (grpcurl, curl) work too.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::roles::Role;

/// A PKI failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to generate or sign.
    #[error("cannot {doing}: {source}")]
    Generate {
        /// What was being generated.
        doing: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// PEM or DER that does not parse.
    #[error("{what} is not a valid certificate or key: {reason}")]
    Invalid {
        /// Which input.
        what: String,
        /// Why.
        reason: String,
    },
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    /// `-----BEGIN CERTIFICATE-----`.
    pub cert_pem: String,
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8).
    pub key_pem: String,
}

/// How long a cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long node certificates are valid (they are not renewed automatically yet).
pub const NODE_VALIDITY: Duration = Duration::days(3650);
/// The default life of a client certificate.
pub const CLIENT_VALIDITY: Duration = Duration::days(365);
/// Certificates start this much before they were made, so a node whose clock lags a
/// little behind the operator's machine still accepts them.
pub const CLOCK_SKEW: Duration = Duration::minutes(10);

/// The name keelctl verifies a node of `cluster` under.
pub fn node_server_name(cluster: &str) -> String {
    format!("nodes.{cluster}.keelson.internal")
}

/// The name a node in maintenance mode puts in its self-signed certificate.
pub const MAINTENANCE_SERVER_NAME: &str = "maintenance.keelson.internal";

/// Checks that a cluster name can be part of a DNS name.
pub fn check_cluster_name(cluster: &str) -> Result<(), String> {
    let valid = !cluster.is_empty()
        && cluster.len() <= 63
        && cluster
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !cluster.starts_with('-')
        && !cluster.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "cluster name {cluster:?} must be 1-63 lowercase letters, digits or '-', \
             not starting or ending with '-'"
        ))
    }
}

/// The cluster's certificate authority.
pub struct ClusterCa {
    certified: CertifiedKey,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClusterCa")
            .field("cert_pem", &self.certified.cert_pem)
            .finish_non_exhaustive()
    }
}

fn generating(doing: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let doing = doing.into();
    move |source| PkiError::Generate { doing, source }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // SystemRandom reads getrandom(2); it fails only where the kernel has none at all.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_be_bytes();
    }
    bytes[0] &= 0x7f; // positive, as RFC 5280 requires
    SerialNumber::from_slice(&bytes)
}

fn base_params(
    names: Vec<String>,
    common_name: &str,
    organization: Option<&str>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(names).map_err(generating("name the certificate"))?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        subject.push(DnType::OrganizationName, organization);
    }
    params.distinguished_name = subject;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn new_key(doing: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generating(doing))
}

impl ClusterCa {
    /// A new CA for `cluster`, valid from `now` for [`CA_VALIDITY`].
    pub fn generate(cluster: &str, now: OffsetDateTime) -> Result<ClusterCa, PkiError> {
        let key = new_key("generate the CA key")?;
        let mut params = base_params(
            Vec::new(),
            &format!("keelson cluster {cluster} CA"),
            Some("keelson"),
            now - CLOCK_SKEW,
            now + CA_VALIDITY,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(generating("self-sign the CA"))?;
        let certified = CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        ClusterCa::load(&certified.cert_pem, &certified.key_pem)
    }

    /// A CA from its PEM certificate and key (as `gen config` wrote them).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|error| PkiError::Invalid {
            what: "the CA key".into(),
            reason: error.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|error| PkiError::Invalid {
                what: "the CA certificate".into(),
                reason: error.to_string(),
            })?;
        Ok(ClusterCa {
            certified: CertifiedKey {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
            issuer,
        })
    }

    /// The CA certificate and key.
    pub fn certified(&self) -> &CertifiedKey {
        &self.certified
    }

    /// A node certificate for `names` (DNS names or IP addresses), valid from `now` for
    /// [`NODE_VALIDITY`].
    pub fn issue_node(
        &self,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        let key = new_key("generate a node key")?;
        let common_name = names.first().map(String::as_str).unwrap_or("keelson node");
        // Nodes present the same certificate when they call each other (Raft, formation),
        // so it is a client certificate too, with the node role.
        let mut params = base_params(
            names.to_vec(),
            common_name,
            Some(&Role::Node.organization()),
            now - CLOCK_SKEW,
            now + NODE_VALIDITY,
        )?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generating("sign the node certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `name` with `role`, valid between the two times.
    pub fn issue_client(
        &self,
        name: &str,
        role: Role,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertifiedKey, PkiError> {
        let key = new_key("generate a client key")?;
        let mut params = base_params(
            Vec::new(),
            name,
            Some(&role.organization()),
            not_before,
            not_after,
        )?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generating("sign the client certificate"))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The self-signed certificate a node serves in maintenance mode (new on every start).
pub fn maintenance_certificate(now: OffsetDateTime) -> Result<CertifiedKey, PkiError> {
    let key = new_key("generate the maintenance key")?;
    let mut params = base_params(
        vec![MAINTENANCE_SERVER_NAME.to_owned()],
        MAINTENANCE_SERVER_NAME,
        Some("keelson"),
        now - CLOCK_SKEW,
        now + Duration::days(30),
    )?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(&key)
        .map_err(generating("self-sign the maintenance certificate"))?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// SHA-256 of a DER certificate, as lowercase hex: what the console prints and
/// `keelctl --fingerprint` pins.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER of the first certificate in `pem`.
pub fn certificate_der(what: &str, pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|error| PkiError::Invalid {
            what: what.to_owned(),
            reason: format!("{error:?}"),
        })
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Common name.
    pub common_name: String,
    /// The role its organisation carries.
    pub role: Option<Role>,
    /// Last second of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads the subject of a DER certificate.
pub fn subject(der: &[u8]) -> Result<Subject, PkiError> {
    let (_, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|error| PkiError::Invalid {
            what: "the certificate".into(),
            reason: error.to_string(),
        })?;
    let name = certificate.subject();
    let common_name = name
        .iter_common_name()
        .find_map(|attribute| attribute.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let role = name
        .iter_organization()
        .filter_map(|attribute| attribute.as_str().ok())
        .find_map(Role::from_organization);
    Ok(Subject {
        common_name,
        role,
        not_after: certificate.validity().not_after.timestamp(),
    })
}

/// Checks that `cert_pem` was signed by `ca_pem` (a node checks its config's material
/// before serving with it).
pub fn check_signed_by(cert_pem: &str, ca_pem: &str) -> Result<(), PkiError> {
    let cert = certificate_der("api.cert", cert_pem)?;
    let ca = certificate_der("api.ca", ca_pem)?;
    let invalid = |what: &str, reason: String| PkiError::Invalid {
        what: what.into(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|error| invalid("api.cert", error.to_string()))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca)
        .map_err(|error| invalid("api.ca", error.to_string()))?;
    cert.verify_signature(Some(ca.public_key())).map_err(|_| {
        invalid(
            "api.cert",
            "it is not signed by api.ca (was it generated for another cluster?)".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_their_role_and_name() {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::generate("lab", now).unwrap();
        for role in Role::ALL {
            let client = ca
                .issue_client("alice", role, now, now + CLIENT_VALIDITY)
                .unwrap();
            let der = certificate_der("client", &client.cert_pem).unwrap();
            let subject = subject(&der).unwrap();
            assert_eq!(subject.common_name, "alice");
            assert_eq!(subject.role, Some(role));
            check_signed_by(&client.cert_pem, &ca.certified().cert_pem).unwrap();
        }
    }

    #[test]
    fn a_certificate_from_another_ca_is_recognised() {
        let now = OffsetDateTime::now_utc();
        let ours = ClusterCa::generate("lab", now).unwrap();
        let theirs = ClusterCa::generate("lab", now).unwrap();
        let node = theirs.issue_node(&[node_server_name("lab")], now).unwrap();
        let error = check_signed_by(&node.cert_pem, &ours.certified().cert_pem).unwrap_err();
        assert!(
            error.to_string().contains("not signed by api.ca"),
            "{error}"
        );
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_it_verifies() {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::generate("lab", now).unwrap();
        let again = ClusterCa::load(&ca.certified().cert_pem, &ca.certified().key_pem).unwrap();
        let node = again
            .issue_node(&["10.0.0.5".into(), node_server_name("lab")], now)
            .unwrap();
        check_signed_by(&node.cert_pem, &ca.certified().cert_pem).unwrap();
    }

    #[test]
    fn cluster_names_must_fit_in_a_dns_label() {
        assert!(check_cluster_name("lab-1").is_ok());
        for bad in ["", "Lab", "-lab", "lab.example", &"x".repeat(64)] {
            assert!(check_cluster_name(bad).is_err(), "{bad:?}");
        }
    }
}
