//! Who may call what (`keelson_api::access::decide`): the API's one security decision.

use keelson_api::access::{decide, ApiMode, Caller, TokenCheck};
use keelson_api::roles::{required_role, Role, APPLY_CONFIG, METHOD_ROLES};

/// The method at `index` in the role table, or one the API lacks.
fn method(index: u8) -> &'static str {
    METHOD_ROLES
        .get(usize::from(index) % (METHOD_ROLES.len() + 1))
        .map(|(method, _)| *method)
        .unwrap_or("/keelson.machine.v1.Machine/Unknown")
}

fn role(index: Option<u8>) -> Option<Role> {
    index.map(|index| Role::ALL[usize::from(index) % Role::ALL.len()])
}

fn token(index: u8) -> TokenCheck {
    [TokenCheck::Missing, TokenCheck::Wrong, TokenCheck::Right][usize::from(index) % 3]
}

/// A call is let through exactly when: the method exists, and either the API is in
/// mutual-TLS mode and the certificate's role is at least the method's, or the API is in
/// maintenance mode, the method is ApplyConfig and the token is right.
fn check(maintenance: bool, method: &str, certificate: Option<Option<Role>>, token: TokenCheck) {
    let mode = if maintenance {
        ApiMode::Maintenance
    } else {
        ApiMode::MutualTls
    };
    let caller = certificate.map(|role| Caller {
        name: "c".into(),
        role,
    });
    let allowed = decide(mode, method, caller.as_ref(), token).is_ok();
    let expected = match (required_role(method), mode) {
        (None, _) => false,
        (Some(_), ApiMode::Maintenance) => method == APPLY_CONFIG && token == TokenCheck::Right,
        (Some(needed), ApiMode::MutualTls) => {
            matches!(certificate, Some(Some(held)) if held >= needed)
        }
    };
    assert_eq!(
        allowed, expected,
        "{mode:?} {method} {certificate:?} {token:?}"
    );
}

/// The rule holds for sampled (bolero) or all (Kani) inputs.
#[test]
#[cfg_attr(kani, kani::proof)]
fn only_the_right_role_or_token_gets_through() {
    bolero::check!()
        .with_type::<(bool, u8, Option<Option<u8>>, u8)>()
        .for_each(|&(maintenance, index, certificate, presented)| {
            check(
                maintenance,
                method(index),
                certificate.map(role),
                token(presented),
            );
        });
}

/// The same rule over the whole domain: 2 modes x 13 methods x 5 certificates x 3 tokens.
#[test]
fn the_rule_holds_for_every_call() {
    let certificates = [
        None,
        Some(None),
        Some(Some(Role::Reader)),
        Some(Some(Role::Operator)),
        Some(Some(Role::Admin)),
    ];
    for maintenance in [false, true] {
        for index in 0..=METHOD_ROLES.len() as u8 {
            for certificate in certificates {
                for presented in 0..3 {
                    check(maintenance, method(index), certificate, token(presented));
                }
            }
        }
    }
}
