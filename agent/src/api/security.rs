//! How the API authenticates right now: mutual TLS with the config's certificates, or
//! maintenance mode with a self-signed certificate and a one-time token.
//!
//! The TLS configuration is read for every new connection, so switching (when
//! `ApplyConfig` brings the first config, or replaces the certificates) takes effect for
//! the next connection without restarting the server.

use std::sync::{Arc, RwLock};

use keelson_api::access::{ApiMode, TokenCheck};
use keelson_api::pki;
use keelson_config::model::ApiPki;
use rustls::ServerConfig;

use keelson_log as logs;

struct State {
    mode: ApiMode,
    tls: Arc<ServerConfig>,
    token: Option<String>,
    fingerprint: String,
    /// Why the node is in maintenance mode, for refusals.
    context: String,
}

/// The API's current authentication, shared by the acceptor, the access check and
/// `ApplyConfig`.
pub struct ApiSecurity {
    state: RwLock<State>,
}

impl std::fmt::Debug for ApiSecurity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ApiSecurity")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // getrandom(2) failing leaves the node without a usable token source; a time-based
        // token is still one-time, and maintenance mode needs the console to read it.
        bytes.copy_from_slice(&logs::uptime_micros().to_le_bytes().repeat(2)[..12]);
    }
    hex::encode(bytes)
}

/// Compares without leaking where the first difference is.
fn same_secret(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn mutual_state(api: &ApiPki) -> anyhow::Result<State> {
    let tls = keelson_api::tls::mutual_server_config(&api.ca, &api.cert, &api.key)?;
    let der = pki::certificate_der("api.cert", &api.cert)?;
    Ok(State {
        mode: ApiMode::MutualTls,
        tls: Arc::new(tls),
        token: None,
        fingerprint: pki::fingerprint(&der),
        context: String::new(),
    })
}

fn maintenance_state(context: String) -> anyhow::Result<State> {
    let now = time::OffsetDateTime::now_utc();
    let certified = pki::maintenance_certificate(now)?;
    let tls = keelson_api::tls::maintenance_server_config(&certified)?;
    let der = pki::certificate_der("maintenance certificate", &certified.cert_pem)?;
    Ok(State {
        mode: ApiMode::Maintenance,
        tls: Arc::new(tls),
        token: Some(new_token()),
        fingerprint: pki::fingerprint(&der),
        context,
    })
}

impl ApiSecurity {
    /// Mutual TLS with `api` (checked when the config was validated).
    pub fn mutual(api: &ApiPki) -> anyhow::Result<ApiSecurity> {
        Ok(ApiSecurity {
            state: RwLock::new(mutual_state(api)?),
        })
    }

    /// Maintenance mode; `context` says why (shown to refused callers).
    pub fn maintenance(context: String) -> anyhow::Result<ApiSecurity> {
        Ok(ApiSecurity {
            state: RwLock::new(maintenance_state(context)?),
        })
    }

    fn read<T>(&self, look: impl FnOnce(&State) -> T) -> T {
        match self.state.read() {
            Ok(state) => look(&state),
            Err(poisoned) => look(&poisoned.into_inner()),
        }
    }

    fn replace(&self, state: State) {
        match self.state.write() {
            Ok(mut current) => *current = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> ApiMode {
        self.read(|state| state.mode)
    }

    /// The TLS configuration for a new connection.
    pub fn tls(&self) -> Arc<ServerConfig> {
        self.read(|state| state.tls.clone())
    }

    /// The served certificate's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        self.read(|state| state.fingerprint.clone())
    }

    /// Why the node is in maintenance mode (empty otherwise).
    pub fn context(&self) -> String {
        self.read(|state| state.context.clone())
    }

    /// Checks a presented maintenance token.
    pub fn check_token(&self, presented: Option<&str>) -> TokenCheck {
        self.read(|state| match (presented, &state.token) {
            (None, _) => TokenCheck::Missing,
            (Some(presented), Some(token))
                if same_secret(presented.as_bytes(), token.as_bytes()) =>
            {
                TokenCheck::Right
            }
            (Some(_), _) => TokenCheck::Wrong,
        })
    }

    /// Switches to mutual TLS with `api` for new connections.
    pub fn enter_mutual(&self, api: &ApiPki) -> anyhow::Result<()> {
        self.replace(mutual_state(api)?);
        Ok(())
    }

    /// Switches to (or stays in) maintenance mode with a fresh certificate and token, and
    /// prints them.
    pub fn enter_maintenance(&self, context: String) -> anyhow::Result<()> {
        self.replace(maintenance_state(context)?);
        self.announce_maintenance();
        Ok(())
    }

    /// Prints what an operator needs to reach a node in maintenance mode.
    pub fn announce_maintenance(&self) {
        let (fingerprint, token) = self.read(|state| {
            (
                state.fingerprint.clone(),
                state.token.clone().unwrap_or_default(),
            )
        });
        logs::console(&format!(
            "keelson: maintenance api port={} fingerprint={fingerprint} token={token}",
            keelson_api::API_PORT
        ));
        logs::console(&format!(
            "keelson: send a config with: keelctl apply-config --insecure --token {token} \
             --fingerprint {fingerprint} -n <address> -f <config>"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_checked_and_replaced_on_each_entry() {
        let security = ApiSecurity::maintenance("no-config".into()).unwrap();
        assert_eq!(security.mode(), ApiMode::Maintenance);
        let token = security.read(|state| state.token.clone()).unwrap();
        assert_eq!(security.check_token(Some(&token)), TokenCheck::Right);
        assert_eq!(security.check_token(Some("0000")), TokenCheck::Wrong);
        assert_eq!(security.check_token(None), TokenCheck::Missing);
        security.enter_maintenance("again".into()).unwrap();
        assert_eq!(security.check_token(Some(&token)), TokenCheck::Wrong);
    }
}
