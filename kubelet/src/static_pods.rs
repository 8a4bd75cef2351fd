//! Static pods: the pods a node runs on its own, from the machine config's `staticPods`
//! and from the manifest files under [`MANIFEST_DIRECTORY`] (the kubelet's static pod
//! path). As the kubelet names the mirror pods of static pods, each is called
//! `NAME-<node>`; annotations say where it came from and hold a hash of its manifest.
//! The API can neither change nor delete one: its source does, and a changed manifest
//! replaces the pod ([`Kubelet::sync_static`](crate::pods::Kubelet::sync_static)).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};

/// Where the machine config's files put static pod manifests.
pub const MANIFEST_DIRECTORY: &str = "/etc/keelson/manifests";
/// `file` for a static pod (the kubelet's own value for its static pod path), absent
/// for a pod from the API.
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// A hash of the manifest the pod was made from.
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// The same hash, as the kubelet marks a static pod's mirror.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Where the manifest is: `machine config staticPods[N]` or the file's path.
pub const ORIGIN_ANNOTATION: &str = "keelson.dev/static-pod-origin";

/// One static pod as its source gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticSource {
    /// Where it is, for messages and the origin annotation.
    pub origin: String,
    /// The v1 Pod manifest.
    pub manifest: serde_json::Value,
}

/// The node's static pods: a pod for each source, or why the source cannot make one.
pub fn pods_of(sources: &[StaticSource], node: &str) -> Vec<Result<Pod, String>> {
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    sources
        .iter()
        .map(|source| {
            let pod = mirror(source, node)?;
            let key = crate::key(&pod);
            if let Some(first) = seen.insert(key.clone(), source.origin.clone()) {
                return Err(format!(
                    "{}: pod {}/{} is also made by {first}; rename one",
                    source.origin, key.0, key.1
                ));
            }
            Ok(pod)
        })
        .collect()
}

/// The pod a source makes: read strictly, named `NAME-<node>`, and annotated with its
/// source and hash.
pub fn mirror(source: &StaticSource, node: &str) -> Result<Pod, String> {
    let origin = &source.origin;
    keelson_config::manifest::check_is_pod(&source.manifest)
        .map_err(|reason| format!("{origin}: {reason}"))?;
    let mut pod = crate::pod::parse_strict(&source.manifest.to_string())
        .map_err(|reason| format!("{origin}: {reason}"))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| format!("{origin}: metadata.name is missing"))?;
    let hash = hash_of(&source.manifest);
    pod.metadata.name = Some(format!("{name}-{node}"));
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(SOURCE_ANNOTATION.into(), "file".into());
    annotations.insert(HASH_ANNOTATION.into(), hash.clone());
    annotations.insert(MIRROR_ANNOTATION.into(), hash);
    annotations.insert(ORIGIN_ANNOTATION.into(), origin.clone());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_owned());
    }
    Ok(pod)
}

/// Where a static pod came from; None for a pod from the API.
pub fn origin_of(pod: &Pod) -> Option<&str> {
    let annotations = pod.metadata.annotations.as_ref()?;
    annotations.get(SOURCE_ANNOTATION)?;
    Some(
        annotations
            .get(ORIGIN_ANNOTATION)
            .map_or("the node's static pods", String::as_str),
    )
}

/// The hash annotation of a pod.
pub fn hash_annotation(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(HASH_ANNOTATION)
        .map(String::as_str)
}

/// Sixteen hex digits of the SHA-256 of the manifest's JSON (serde_json keeps object keys
/// sorted, so equal manifests hash alike).
fn hash_of(manifest: &serde_json::Value) -> String {
    let digest = Sha256::digest(manifest.to_string().as_bytes());
    digest
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The manifests of `directory`: every `.yaml`, `.yml` and `.json` file, in name order,
/// several documents each; a missing directory has none. Returns them and what could not
/// be read.
pub fn read_directory(directory: &Path) -> (Vec<StaticSource>, Vec<String>) {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    let files = match keelson_config::manifest::manifest_files(directory) {
        Ok(files) => files,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return (sources, problems),
        Err(error) => {
            problems.push(format!("{}: {error}", directory.display()));
            return (sources, problems);
        }
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) => {
                problems.push(format!("{}: {error}", file.display()));
                continue;
            }
        };
        match keelson_config::manifest::pod_documents(&text) {
            Ok(documents) => {
                let several = documents.len() > 1;
                for (index, manifest) in documents.into_iter().enumerate() {
                    let origin = if several {
                        format!("{} (document {})", file.display(), index + 1)
                    } else {
                        file.display().to_string()
                    };
                    sources.push(StaticSource { origin, manifest });
                }
            }
            Err(reason) => problems.push(format!("{}: {reason}", file.display())),
        }
    }
    (sources, problems)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn source(origin: &str, manifest: serde_json::Value) -> StaticSource {
        StaticSource {
            origin: origin.into(),
            manifest,
        }
    }

    #[test]
    fn a_static_pod_is_named_after_its_node_and_says_where_it_came_from() {
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "annotations": {"team": "edge"}},
            "spec": {"containers": [{"name": "web", "image": "busybox"}]},
        });
        let pod = mirror(
            &source("machine config staticPods[0]", manifest.clone()),
            "node-a",
        )
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-a"));
        assert_eq!(origin_of(&pod), Some("machine config staticPods[0]"));
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["team"], "edge");
        assert_eq!(annotations[SOURCE_ANNOTATION], "file");
        assert_eq!(annotations[HASH_ANNOTATION].len(), 16);
        assert_eq!(annotations[HASH_ANNOTATION], annotations[MIRROR_ANNOTATION]);
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-a"));
        // Another manifest, another hash; the same one, the same hash.
        let mut changed = manifest.clone();
        changed["spec"]["containers"][0]["image"] = "busybox:2".into();
        let again = mirror(&source("x", manifest), "node-a").unwrap();
        let other = mirror(&source("x", changed), "node-a").unwrap();
        assert_eq!(
            hash_annotation(&again),
            Some(annotations[HASH_ANNOTATION].as_str())
        );
        assert_ne!(hash_annotation(&other), hash_annotation(&again));
    }

    #[test]
    fn bad_sources_say_where_and_what() {
        let cases = [
            (
                serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}),
                "m.yaml: v1/Service is not a v1/Pod; this node takes pods only",
            ),
            (
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {},
                    "spec": {"containers": [{"name": "a", "image": "b"}]}}),
                "m.yaml: metadata.name is missing",
            ),
            (
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
                    "spec": {"containers": [{"name": "a", "image": "b", "imagee": "c"}]}}),
                "m.yaml: pod a: unknown field \"spec.containers[0].imagee\"",
            ),
        ];
        for (manifest, expected) in cases {
            let error = mirror(&source("m.yaml", manifest), "n").unwrap_err();
            assert!(error.starts_with(expected), "{error}");
        }
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "a", "image": "b"}]}});
        let made = pods_of(&[source("first", pod.clone()), source("second", pod)], "n");
        assert!(made[0].is_ok());
        assert_eq!(
            made[1].as_ref().unwrap_err(),
            "second: pod default/a-n is also made by first; rename one"
        );
    }

    #[test]
    fn a_directory_gives_each_document_of_each_manifest_file() {
        let directory = tempfile::tempdir().unwrap();
        assert_eq!(
            read_directory(&directory.path().join("none")),
            (vec![], vec![])
        );
        std::fs::write(
            directory.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: one}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: two}\n",
        )
        .unwrap();
        std::fs::write(
            directory.path().join("a.json"),
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "zero"}}"#,
        )
        .unwrap();
        std::fs::write(directory.path().join("c.yml"), "kind: Deployment\n").unwrap();
        std::fs::write(directory.path().join("notes.txt"), "not a manifest").unwrap();
        let (sources, problems) = read_directory(directory.path());
        let names: Vec<&str> = sources
            .iter()
            .map(|source| source.manifest["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["zero", "one", "two"]);
        assert!(
            sources[2].origin.ends_with("b.yaml (document 2)"),
            "{}",
            sources[2].origin
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("c.yml: document 1: /Deployment is not a v1/Pod"),
            "{problems:?}"
        );
    }
}
