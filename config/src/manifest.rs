//! Pod manifests as `kubectl apply -f` and the kubelet's static pod path read them: JSON,
//! or YAML of one or more documents, each a v1 Pod. `keelctl apply` sends what this finds;
//! the agent reads the static pods of `/etc/keelson/manifests` with it. (The one read of
//! the file system here, [`manifest_files`], lists a directory.)

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The manifest files of a directory, as `kubectl apply -f DIR` and the kubelet's static
/// pod path take them: its `.yaml`, `.yml` and `.json` files, in name order.
pub fn manifest_files(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path.extension().is_some_and(|extension| {
                    ["yaml", "yml", "json"].contains(&&*extension.to_string_lossy())
                })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The objects of a manifest, each checked to be a v1 Pod (empty YAML documents are
/// skipped). The error names the document.
pub fn pod_documents(text: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?]
    } else {
        let mut documents = Vec::new();
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(document)
                .map_err(|error| format!("document {}: not YAML: {error}", index + 1))?;
            if !value.is_null() {
                documents.push(value);
            }
        }
        documents
    };
    if documents.is_empty() {
        return Err("no objects in the manifest".into());
    }
    for (index, document) in documents.iter().enumerate() {
        check_is_pod(document).map_err(|reason| format!("document {}: {reason}", index + 1))?;
    }
    Ok(documents)
}

/// A v1 Pod's `apiVersion` and `kind`, or why the object is not one.
pub fn check_is_pod(document: &Value) -> Result<(), String> {
    let kind = document["kind"].as_str().unwrap_or_default();
    let version = document["apiVersion"].as_str().unwrap_or_default();
    if kind != "Pod" || version != "v1" {
        return Err(format!(
            "{version}/{kind} is not a v1/Pod; this node takes pods only"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_are_read_and_each_must_be_a_pod() {
        let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n";
        let pods = pod_documents(two).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[1]["metadata"]["name"], "b");
        let json = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c"}}"#;
        assert_eq!(pod_documents(json).unwrap()[0]["metadata"]["name"], "c");
        assert_eq!(
            pod_documents(
                "apiVersion: v1\nkind: Pod\n---\napiVersion: apps/v1\nkind: Deployment\n"
            )
            .unwrap_err(),
            "document 2: apps/v1/Deployment is not a v1/Pod; this node takes pods only"
        );
        assert_eq!(
            pod_documents("---\n").unwrap_err(),
            "no objects in the manifest"
        );
        assert!(pod_documents("a: [")
            .unwrap_err()
            .starts_with("document 1: not YAML: "));
    }
}
