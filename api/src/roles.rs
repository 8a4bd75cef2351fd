//! Roles and the least role each RPC needs.
//!
//! A client certificate carries one role. Roles are ordered: an operator can do all a
//! reader can, an admin all an operator can. The table below is the single place that
//! says who may call what; a test checks that it names every method the protobuf files
//! declare, so that a new RPC cannot ship without a role.

use std::fmt;
use std::str::FromStr;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read state: version, status, services, logs, dmesg, files.
    Reader,
    /// Also power the node and (later) update it.
    Operator,
    /// Everything, including replacing the config and wiping the node.
    Admin,
    /// Another node of the cluster (its node certificate): the control plane's own calls
    /// (Raft, formation, forwarded writes) and what a reader may read, nothing more. It
    /// stands beside the client roles, not above or below them.
    Node,
}

impl Role {
    /// Every role a client certificate may carry, least first (nodes carry [`Role::Node`]).
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    /// The name used in certificates, configs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }

    /// The certificate subject organisation that carries this role.
    pub fn organization(self) -> String {
        format!("{ORGANIZATION_PREFIX}{}", self.name())
    }

    /// The role an organisation names, if it is one of ours.
    pub fn from_organization(organization: &str) -> Option<Role> {
        organization
            .strip_prefix(ORGANIZATION_PREFIX)
            .and_then(|name| name.parse().ok())
    }

    /// True when this role may do what `needed` allows: client roles are ordered; the node
    /// role may call node methods and read, and no client role may call node methods.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Node, needed) => matches!(needed, Role::Node | Role::Reader),
            (_, Role::Node) => false,
            (held, needed) => held >= needed,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .chain([Role::Node])
            .find(|role| role.name() == text)
            .ok_or_else(|| format!("{text:?} is not a role (reader, operator or admin)"))
    }
}

/// Organisations beginning with this carry a Keelson role.
pub const ORGANIZATION_PREFIX: &str = "keelson:";

/// The method that maintenance mode accepts.
pub const APPLY_CONFIG: &str = "/keelson.machine.v1.Machine/ApplyConfig";

/// Every RPC (as its gRPC path) and the least role it needs.
pub const METHOD_ROLES: &[(&str, Role)] = &[
    ("/keelson.machine.v1.Machine/Version", Role::Reader),
    ("/keelson.machine.v1.Machine/Status", Role::Reader),
    ("/keelson.machine.v1.Machine/Services", Role::Reader),
    ("/keelson.machine.v1.Machine/Logs", Role::Reader),
    ("/keelson.machine.v1.Machine/Dmesg", Role::Reader),
    ("/keelson.machine.v1.Machine/Reboot", Role::Operator),
    ("/keelson.machine.v1.Machine/Shutdown", Role::Operator),
    ("/keelson.machine.v1.Machine/RestartAgent", Role::Operator),
    (APPLY_CONFIG, Role::Admin),
    ("/keelson.machine.v1.Machine/Reset", Role::Admin),
    ("/keelson.files.v1.Files/List", Role::Reader),
    ("/keelson.files.v1.Files/Read", Role::Reader),
    ("/keelson.update.v1.Update/Status", Role::Reader),
    ("/keelson.update.v1.Update/Check", Role::Reader),
    ("/keelson.update.v1.Update/Apply", Role::Operator),
    ("/keelson.update.v1.Update/Rollback", Role::Operator),
    ("/keelson.update.v1.Update/Cancel", Role::Operator),
    ("/keelson.images.v1.Images/List", Role::Reader),
    ("/keelson.images.v1.Images/Import", Role::Operator),
    ("/keelson.images.v1.Images/Pull", Role::Operator),
    ("/keelson.images.v1.Images/Remove", Role::Operator),
    ("/keelson.pods.v1.Pods/Apply", Role::Operator),
    ("/keelson.pods.v1.Pods/List", Role::Reader),
    ("/keelson.pods.v1.Pods/Get", Role::Reader),
    ("/keelson.pods.v1.Pods/Events", Role::Reader),
    ("/keelson.pods.v1.Pods/Delete", Role::Operator),
    ("/keelson.pods.v1.Pods/Logs", Role::Reader),
    ("/keelson.pods.v1.Pods/Top", Role::Reader),
    // Running commands in containers changes them: operators only, as kubectl's
    // pods/exec is a create.
    ("/keelson.pods.v1.Pods/Exec", Role::Operator),
    ("/keelson.cluster.v1.Cluster/Members", Role::Reader),
    ("/keelson.cluster.v1.Cluster/Status", Role::Reader),
    ("/keelson.cluster.v1.Cluster/Raft", Role::Node),
    ("/keelson.cluster.v1.Cluster/Formation", Role::Node),
    ("/keelson.cluster.v1.Cluster/Register", Role::Node),
    ("/keelson.cluster.v1.Cluster/Nodes", Role::Reader),
    ("/keelson.cluster.v1.Cluster/DeleteNode", Role::Operator),
    ("/keelson.cluster.v1.Cluster/Write", Role::Node),
    ("/keelson.cluster.v1.Cluster/Lock", Role::Node),
    ("/keelson.cluster.v1.Cluster/LockStatus", Role::Reader),
];

/// The least role `method` (a gRPC path) needs; `None` for a method the API lacks.
pub fn required_role(method: &str) -> Option<Role> {
    METHOD_ROLES
        .iter()
        .find(|(path, _)| *path == method)
        .map(|(_, role)| *role)
}

/// The short name of a gRPC path, e.g. `Reboot` for `/keelson.machine.v1.Machine/Reboot`.
pub fn method_name(method: &str) -> &str {
    method.rsplit('/').next().unwrap_or(method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn roles_are_ordered_and_round_trip_through_certificates() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        assert!(Role::Node.allows(Role::Node) && Role::Node.allows(Role::Reader));
        assert!(!Role::Node.allows(Role::Operator) && !Role::Node.allows(Role::Admin));
        for client in Role::ALL {
            assert!(!client.allows(Role::Node), "{client} may not act as a node");
        }
        assert_eq!(Role::from_organization("keelson:node"), Some(Role::Node));
        for role in Role::ALL {
            assert_eq!(Role::from_organization(&role.organization()), Some(role));
        }
        assert_eq!(Role::from_organization("keelson:root"), None);
        assert_eq!(Role::from_organization("os:admin"), None);
    }

    #[test]
    fn every_declared_method_has_exactly_one_role() {
        let descriptors =
            prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let mut declared = Vec::new();
        for file in &descriptors.file {
            for service in &file.service {
                for method in &service.method {
                    declared.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        declared.sort();
        let mut tabled: Vec<String> = METHOD_ROLES.iter().map(|(m, _)| m.to_string()).collect();
        tabled.sort();
        assert_eq!(
            declared, tabled,
            "roles::METHOD_ROLES must list every RPC once"
        );
    }
}
