//! Whether a call is let through: a pure decision, made before any service code runs.
//!
//! The agent's API runs in one of two modes:
//! - **mutual TLS**: the handshake has already refused clients without a certificate
//!   from the cluster CA (or with an expired one); here the certificate's role is checked
//!   against the method's least role ([`crate::roles`]);
//! - **maintenance**: the node has no usable config, serves a self-signed certificate and
//!   accepts only `ApplyConfig`, carrying the one-time token printed on its console.

use crate::roles::{self, Role};

/// How the API currently authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiMode {
    /// Clients present certificates from the cluster CA.
    MutualTls,
    /// No config: only `ApplyConfig` with the console's token.
    Maintenance,
}

/// Who is calling, as read from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The certificate's common name.
    pub name: String,
    /// The role its organisation carries, if any.
    pub role: Option<Role>,
}

/// What the caller presented as maintenance token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// No token in the request metadata.
    Missing,
    /// A token that is not the current one (or one already used).
    Wrong,
    /// The current token.
    Right,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The method is not part of the API.
    UnknownMethod {
        /// The gRPC path.
        method: String,
    },
    /// The certificate carries no Keelson role.
    NoRole {
        /// The certificate's common name.
        caller: String,
    },
    /// The role is below the method's least role.
    RoleTooLow {
        /// The gRPC path.
        method: String,
        /// The least role the method needs.
        needed: Role,
        /// The caller's role.
        held: Role,
        /// The certificate's common name.
        caller: String,
    },
    /// Maintenance mode accepts only `ApplyConfig`.
    Maintenance {
        /// The gRPC path.
        method: String,
    },
    /// `ApplyConfig` in maintenance mode without the right token.
    Token(TokenCheck),
}

impl Denial {
    /// The gRPC status the client receives; `context` is appended to maintenance
    /// refusals (why the node is in maintenance mode).
    pub fn status(&self, context: &str) -> tonic::Status {
        let with_context = |message: String| {
            if context.is_empty() {
                message
            } else {
                format!("{message} ({context})")
            }
        };
        match self {
            Denial::UnknownMethod { method } => {
                tonic::Status::unimplemented(format!("{method} is not part of the Keelson API"))
            }
            Denial::NoRole { caller } => tonic::Status::permission_denied(format!(
                "the certificate of {caller:?} carries no Keelson role \
                 (organisation keelson:reader, keelson:operator or keelson:admin)"
            )),
            Denial::RoleTooLow {
                method,
                needed,
                held,
                caller,
            } => tonic::Status::permission_denied(format!(
                "{} needs role {needed}; {caller:?} has role {held}",
                roles::method_name(method)
            )),
            Denial::Maintenance { method } => {
                tonic::Status::permission_denied(with_context(format!(
                    "the node is in maintenance mode and accepts only apply-config \
                     (keelctl apply-config --insecure --token TOKEN -f CONFIG), not {}",
                    roles::method_name(method)
                )))
            }
            Denial::Token(TokenCheck::Missing) => tonic::Status::unauthenticated(
                "maintenance mode: apply-config needs the token printed on the node's console \
                 (--token)",
            ),
            Denial::Token(_) => tonic::Status::unauthenticated(
                "maintenance mode: wrong token; use the one printed on the node's console \
                 (it changes after each successful apply-config and on every boot)",
            ),
        }
    }
}

/// Decides whether `method` may run. `caller` is `None` when no client certificate was
/// presented (possible only in maintenance mode: mutual TLS refuses it in the handshake).
pub fn decide(
    mode: ApiMode,
    method: &str,
    caller: Option<&Caller>,
    token: TokenCheck,
) -> Result<(), Denial> {
    let Some(needed) = roles::required_role(method) else {
        return Err(Denial::UnknownMethod {
            method: method.to_owned(),
        });
    };
    match mode {
        ApiMode::Maintenance if method != roles::APPLY_CONFIG => Err(Denial::Maintenance {
            method: method.to_owned(),
        }),
        ApiMode::Maintenance => match token {
            TokenCheck::Right => Ok(()),
            other => Err(Denial::Token(other)),
        },
        ApiMode::MutualTls => {
            let Some(caller) = caller else {
                return Err(Denial::NoRole {
                    caller: "(no certificate)".into(),
                });
            };
            let Some(held) = caller.role else {
                return Err(Denial::NoRole {
                    caller: caller.name.clone(),
                });
            };
            if held.allows(needed) {
                Ok(())
            } else {
                Err(Denial::RoleTooLow {
                    method: method.to_owned(),
                    needed,
                    held,
                    caller: caller.name.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::METHOD_ROLES;

    fn caller(role: Option<Role>) -> Caller {
        Caller {
            name: "someone".into(),
            role,
        }
    }

    #[test]
    fn mutual_tls_lets_a_role_call_exactly_the_methods_at_or_below_it() {
        for (method, needed) in METHOD_ROLES {
            for held in Role::ALL {
                let decision = decide(
                    ApiMode::MutualTls,
                    method,
                    Some(&caller(Some(held))),
                    TokenCheck::Missing,
                );
                assert_eq!(decision.is_ok(), held >= *needed, "{held} calling {method}");
                if let Err(denial) = decision {
                    let status = denial.status("");
                    assert_eq!(status.code(), tonic::Code::PermissionDenied);
                    assert!(status.message().contains(&format!("needs role {needed}")));
                }
            }
        }
    }

    #[test]
    fn a_certificate_without_a_role_can_call_nothing() {
        for (method, _) in METHOD_ROLES {
            let denial = decide(
                ApiMode::MutualTls,
                method,
                Some(&caller(None)),
                TokenCheck::Right,
            )
            .unwrap_err();
            assert!(matches!(denial, Denial::NoRole { .. }));
        }
    }

    #[test]
    fn maintenance_accepts_only_apply_config_with_the_right_token() {
        for (method, _) in METHOD_ROLES {
            for token in [TokenCheck::Missing, TokenCheck::Wrong, TokenCheck::Right] {
                // A certificate, even an admin's, changes nothing in maintenance mode.
                let admin = caller(Some(Role::Admin));
                let decision = decide(ApiMode::Maintenance, method, Some(&admin), token);
                let allowed = *method == roles::APPLY_CONFIG && token == TokenCheck::Right;
                assert_eq!(decision.is_ok(), allowed, "{method} with {token:?}");
            }
        }
        let status = decide(
            ApiMode::Maintenance,
            "/keelson.machine.v1.Machine/Status",
            None,
            TokenCheck::Right,
        )
        .unwrap_err()
        .status("invalid-config: 1 error");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("invalid-config: 1 error"));
    }

    #[test]
    fn unknown_methods_are_unimplemented_in_every_mode() {
        for mode in [ApiMode::MutualTls, ApiMode::Maintenance] {
            let denial = decide(
                mode,
                "/keelson.machine.v1.Machine/Format",
                Some(&caller(Some(Role::Admin))),
                TokenCheck::Right,
            )
            .unwrap_err();
            assert_eq!(denial.status("").code(), tonic::Code::Unimplemented);
        }
    }
}
