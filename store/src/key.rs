//! Which object: its kind, namespace and name.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An object's type, as `apiVersion` and `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KindRef {
    /// `v1`, `keelson.dev/v1alpha1`, …
    pub api_version: String,
    /// `Node`, `Pod`, …
    pub kind: String,
}

/// Kinds that live outside namespaces, as in Kubernetes; every other kind is namespaced.
const CLUSTER_SCOPED: [(&str, &str); 4] = [
    ("v1", "Node"),
    ("v1", "Namespace"),
    ("keelson.dev/v1alpha1", "PodCIDRLease"),
    ("keelson.dev/v1alpha1", "RebootLock"),
];

impl KindRef {
    /// The kind `kind` of `api_version`.
    pub fn new(api_version: &str, kind: &str) -> KindRef {
        KindRef {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(&self) -> bool {
        !CLUSTER_SCOPED
            .iter()
            .any(|(api, kind)| *api == self.api_version && *kind == self.kind)
    }
}

impl fmt::Display for KindRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.api_version, self.kind)
    }
}

/// One object's identity in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// Its kind.
    pub kind: KindRef,
    /// Its namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl Key {
    /// The key of a cluster-scoped object, or of a namespaced one with its namespace.
    pub fn new(kind: KindRef, namespace: Option<&str>, name: &str) -> Key {
        Key {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// The key an object names: its `apiVersion`, `kind`, `metadata.namespace` (`default`
    /// when a namespaced kind gives none) and `metadata.name`, or what is missing.
    pub fn of(object: &Value) -> Result<Key, String> {
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let api_version = text("/apiVersion").ok_or("the object has no apiVersion")?;
        let kind = text("/kind").ok_or("the object has no kind")?;
        let name = text("/metadata/name")
            .filter(|name| !name.is_empty())
            .ok_or("the object has no metadata.name")?;
        let kind = KindRef::new(api_version, kind);
        let namespace = match (kind.is_namespaced(), text("/metadata/namespace")) {
            (true, Some(namespace)) if !namespace.is_empty() => Some(namespace.to_owned()),
            (true, _) => Some("default".to_owned()),
            (false, None) | (false, Some("")) => None,
            (false, Some(namespace)) => {
                return Err(format!(
                    "{kind} is not namespaced, but the object names namespace {namespace:?}"
                ))
            }
        };
        Ok(Key {
            kind,
            namespace,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_follow_the_kinds_scope() {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "lab-1"}});
        assert_eq!(Key::of(&node).unwrap().to_string(), "v1/Node lab-1");
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}});
        assert_eq!(Key::of(&pod).unwrap().to_string(), "v1/Pod default/web");
        let placed = json!({"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": "lab-1", "namespace": "kube-system"}});
        assert!(Key::of(&placed).unwrap_err().contains("not namespaced"));
        let nameless = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}});
        assert_eq!(
            Key::of(&nameless).unwrap_err(),
            "the object has no metadata.name"
        );
    }
}
