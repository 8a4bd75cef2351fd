//! Ignition's pointer configs, resolved into one self-contained document before it is
//! translated.
//!
//! A config may name others: `ignition.config.replace` (fetch this one instead) and
//! `ignition.config.merge` (fetch these and lay them over this one, in order), as clouds
//! with small user-data limits and provisioning servers such as Matchbox hand out. It may
//! also name extra TLS authorities, `ignition.security.tls.certificateAuthorities`, for
//! every `https://` fetch. [`resolve`] follows all of them, as Ignition does:
//!
//! - a replacement is fetched with the authorities known so far, verified against its
//!   `verification.hash`, resolved in turn, and stands in for the whole config;
//! - each merged config is fetched, verified and resolved the same way, then laid over the
//!   result so far with [`merge`];
//! - an authority given by URL is fetched (it cannot vouch for its own fetch) and inlined
//!   as a `data:` URL, so the result names nothing that still has to be fetched.
//!
//! The module does no I/O: the caller passes a `fetch` function (an HTTP(S) GET with its
//! own size bound and deadline), and everything else (hash checks, decompression,
//! nesting limits, merging) happens here, so the rules are tested without a network.

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::{Map, Value};

use crate::diagnostic::Findings;
use crate::load::Rejected;
use crate::plan::{decode_data_url, gunzip, ContentHash};

/// How deep pointer configs may nest (a replacement of a merged config of … ). Ignition
/// sets no number; eight is far beyond any real chain and stops a loop quickly.
pub const MAX_DEPTH: usize = 8;
/// How many configs and authorities one resolution may fetch in all.
pub const MAX_FETCHES: usize = 32;

/// One remote document to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The field that names it, e.g. `ignition.config.merge[1]` (nested fields are prefixed
    /// with the URL of the config they came from).
    pub field: String,
    /// `http://` or `https://`.
    pub url: String,
    /// Certificate authorities (PEM) to trust beside the root's bundle for this fetch.
    pub authorities: Vec<String>,
}

/// A resolved Ignition document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The self-contained Ignition JSON: no `ignition.config`, every authority inline.
    pub document: Vec<u8>,
    /// What was fetched, one line each, for the console (`replaced by …`, `merged …`).
    pub fetched: Vec<String>,
}

/// True when `bytes` are an Ignition document that names a config or an authority to
/// fetch, so that the caller knows to bring the network up first.
pub fn needs_fetching(bytes: &[u8]) -> bool {
    let Ok(document) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    let pointers = Pointers::of(&document, "");
    pointers.replace.is_some()
        || !pointers.merge.is_empty()
        || pointers
            .authorities
            .iter()
            .any(|resource| !resource.source.starts_with("data:"))
}

/// Follows the pointers of the Ignition document `bytes` (named `source` in errors),
/// calling `fetch` for each remote document. Any failure (a fetch, a hash, a malformed
/// fetched config, nesting past [`MAX_DEPTH`]) rejects the whole config: nothing of it may
/// be applied.
pub fn resolve(
    source: &str,
    bytes: &[u8],
    fetch: &mut dyn FnMut(&FetchRequest) -> Result<Vec<u8>, String>,
) -> Result<Resolved, Rejected> {
    let mut findings = Findings::new(source);
    let document = match serde_json::from_slice::<Value>(bytes) {
        Ok(document) => document,
        Err(error) => {
            findings.error("$", format!("malformed Ignition config: {error}"));
            return Err(Rejected {
                diagnostics: findings.diagnostics,
            });
        }
    };
    let mut resolver = Resolver {
        fetch,
        fetches: 0,
        fetched: Vec::new(),
    };
    match resolver.resolve(document, "", &[], 0) {
        Ok(document) => Ok(Resolved {
            document: serde_json::to_vec(&document).unwrap_or_default(),
            fetched: resolver.fetched,
        }),
        Err((field, reason)) => {
            findings.error(field, reason);
            Err(Rejected {
                diagnostics: findings.diagnostics,
            })
        }
    }
}

/// A resource as Ignition writes it: `source`, `compression`, `verification.hash`.
#[derive(Debug, Clone)]
struct Resource {
    field: String,
    source: String,
    compression: Option<String>,
    hash: Option<String>,
}

impl Resource {
    fn read(value: &Value, field: String) -> Option<Resource> {
        let source = value.get("source")?.as_str()?.to_owned();
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(Resource {
            field,
            source,
            compression: text("compression").filter(|compression| !compression.is_empty()),
            hash: value
                .get("verification")
                .and_then(|verification| verification.get("hash"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// The pointers of one document.
struct Pointers {
    replace: Option<Resource>,
    merge: Vec<Resource>,
    authorities: Vec<Resource>,
}

impl Pointers {
    fn of(document: &Value, prefix: &str) -> Pointers {
        let ignition = document.get("ignition");
        let config = ignition.and_then(|ignition| ignition.get("config"));
        let list = |value: Option<&Value>, name: &str| -> Vec<Resource> {
            value
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(index, item)| {
                    Resource::read(item, format!("{prefix}{name}[{index}]"))
                })
                .collect()
        };
        Pointers {
            replace: config
                .and_then(|config| config.get("replace"))
                .and_then(|replace| {
                    Resource::read(replace, format!("{prefix}ignition.config.replace"))
                }),
            merge: list(
                config.and_then(|config| config.get("merge")),
                "ignition.config.merge",
            ),
            authorities: list(
                ignition
                    .and_then(|ignition| ignition.get("security"))
                    .and_then(|security| security.get("tls"))
                    .and_then(|tls| tls.get("certificateAuthorities")),
                "ignition.security.tls.certificateAuthorities",
            ),
        }
    }
}

/// A failure: the field and the reason.
type Failure = (String, String);

struct Resolver<'f> {
    fetch: &'f mut dyn FnMut(&FetchRequest) -> Result<Vec<u8>, String>,
    fetches: usize,
    fetched: Vec<String>,
}

impl Resolver<'_> {
    /// Resolves `document`, whose fields are named with `prefix`, trusting `inherited`
    /// authorities (the ones its parents named) for its fetches.
    fn resolve(
        &mut self,
        mut document: Value,
        prefix: &str,
        inherited: &[String],
        depth: usize,
    ) -> Result<Value, Failure> {
        let pointers = Pointers::of(&document, prefix);
        // Its own authorities serve its children; one given by URL is fetched with the
        // parents' alone.
        let mut authorities = inherited.to_vec();
        let mut inline_authorities = Vec::new();
        for resource in &pointers.authorities {
            let pem = self.contents(resource, inherited)?;
            inline_authorities.push(data_url(&pem));
            authorities.push(String::from_utf8_lossy(&pem).into_owned());
        }
        if let Some(replace) = &pointers.replace {
            let child = self.child(replace, &authorities, depth)?;
            self.fetched
                .push(format!("config replaced by {}", replace.source));
            return Ok(child);
        }
        strip_pointers(&mut document, &inline_authorities);
        for resource in &pointers.merge {
            let child = self.child(resource, &authorities, depth)?;
            self.fetched.push(format!("merged {}", resource.source));
            document = merge(document, child);
        }
        Ok(document)
    }

    /// Fetches, verifies and resolves a replacement or merged config.
    fn child(
        &mut self,
        resource: &Resource,
        authorities: &[String],
        depth: usize,
    ) -> Result<Value, Failure> {
        if depth + 1 >= MAX_DEPTH {
            return Err((
                resource.field.clone(),
                format!(
                    "pointer configs nest deeper than {MAX_DEPTH} levels at {:?}; is there a \
                     loop of configs naming each other?",
                    resource.source
                ),
            ));
        }
        let bytes = self.contents(resource, authorities)?;
        let child: Value = serde_json::from_slice(&bytes).map_err(|error| {
            (
                resource.field.clone(),
                format!(
                    "{} is not an Ignition config (JSON): {error}",
                    resource.source
                ),
            )
        })?;
        if child.get("ignition").is_none() {
            return Err((
                resource.field.clone(),
                format!(
                    "{} is not an Ignition config: it has no \"ignition\" section",
                    resource.source
                ),
            ));
        }
        let prefix = format!("{} ", resource.source);
        self.resolve(child, &prefix, authorities, depth + 1)
    }

    /// A resource's bytes: decoded when inline, otherwise fetched; then checked against its
    /// hash and decompressed.
    fn contents(
        &mut self,
        resource: &Resource,
        authorities: &[String],
    ) -> Result<Vec<u8>, Failure> {
        let failed = |reason: String| (resource.field.clone(), reason);
        let hash = resource
            .hash
            .as_deref()
            .map(ContentHash::parse)
            .transpose()
            .map_err(|reason| (format!("{}.verification.hash", resource.field), reason))?;
        let raw = if resource.source.starts_with("data:") {
            decode_data_url(&resource.source).map_err(failed)?
        } else if resource.source.starts_with("http://") || resource.source.starts_with("https://")
        {
            self.fetches += 1;
            if self.fetches > MAX_FETCHES {
                return Err(failed(format!(
                    "more than {MAX_FETCHES} configs and authorities to fetch; refusing {:?}",
                    resource.source
                )));
            }
            (self.fetch)(&FetchRequest {
                field: resource.field.clone(),
                url: resource.source.clone(),
                authorities: authorities.to_vec(),
            })
            .map_err(failed)?
        } else {
            let scheme = resource
                .source
                .split_once(':')
                .map_or(resource.source.as_str(), |(scheme, _)| scheme);
            return Err(failed(format!(
                "the {scheme:?} scheme is not supported for configs and authorities; use \
                 data:, http:// or https://"
            )));
        };
        if let Some(hash) = &hash {
            hash.verify(&raw)
                .map_err(|reason| failed(format!("{}: {reason}", resource.source)))?;
        }
        match resource.compression.as_deref() {
            None => Ok(raw),
            Some("gzip") => gunzip(&raw).map_err(failed),
            Some(other) => Err((
                format!("{}.compression", resource.field),
                format!("{other:?} is not a compression Ignition knows; use gzip or none"),
            )),
        }
    }
}

/// Removes `ignition.config` (resolved now) and puts the authorities back inline.
fn strip_pointers(document: &mut Value, inline_authorities: &[String]) {
    let Some(ignition) = document.get_mut("ignition").and_then(Value::as_object_mut) else {
        return;
    };
    ignition.remove("config");
    if inline_authorities.is_empty() {
        return;
    }
    let list = inline_authorities
        .iter()
        .map(|source| serde_json::json!({ "source": source }))
        .collect();
    let security = ignition
        .entry("security")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(security) = security.as_object_mut() {
        let tls = security
            .entry("tls")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(tls) = tls.as_object_mut() {
            tls.insert("certificateAuthorities".into(), Value::Array(list));
        }
    }
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Lays `child` over `parent` as Ignition merges configs:
/// - objects merge key by key, and a value the child sets wins;
/// - lists whose entries have a key (files, directories and links by `path`, users,
///   groups and units by `name`, disks and filesystems by `device`, authorities by
///   `source`) merge entry by entry, and the child's new entries follow the parent's;
/// - a path the child declares as a file, directory or link is no longer any other kind
///   of node in the parent;
/// - other lists (a file's `append`, SSH keys) are concatenated, without repeats;
/// - `ignition.version` becomes the newer of the two, so both documents' keys are known.
pub fn merge(parent: Value, child: Value) -> Value {
    let parent_version = version_of(&parent);
    let child_version = version_of(&child);
    let mut merged = merge_at("", parent, child);
    let newest = [parent_version, child_version].into_iter().flatten().max();
    if let (Some(version), Some(ignition)) = (
        newest,
        merged.get_mut("ignition").and_then(Value::as_object_mut),
    ) {
        ignition.insert("version".into(), Value::String(version.to_string()));
    }
    merged
}

fn version_of(document: &Value) -> Option<semver::Version> {
    document
        .get("ignition")?
        .get("version")?
        .as_str()
        .and_then(|text| semver::Version::parse(text).ok())
}

/// The key that identifies an entry of the list at `path`, if its entries have one.
fn entry_key(path: &str) -> Option<&'static str> {
    match path {
        "storage.files" | "storage.directories" | "storage.links" => Some("path"),
        "storage.disks" | "storage.filesystems" => Some("device"),
        "storage.raid" | "storage.luks" | "passwd.users" | "passwd.groups" | "systemd.units" => {
            Some("name")
        }
        "ignition.security.tls.certificateAuthorities" | "ignition.config.merge" => Some("source"),
        _ => None,
    }
}

const NODE_LISTS: [&str; 3] = ["files", "directories", "links"];

fn merge_at(path: &str, parent: Value, child: Value) -> Value {
    match (parent, child) {
        (Value::Object(mut parent), Value::Object(child)) => {
            if path == "storage" {
                evict_retyped_paths(&mut parent, &child);
            }
            for (key, child_value) in child {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let merged = match parent.remove(&key) {
                    Some(parent_value) => merge_at(&child_path, parent_value, child_value),
                    None => child_value,
                };
                parent.insert(key, merged);
            }
            Value::Object(parent)
        }
        (Value::Array(parent), Value::Array(child)) => match entry_key(path) {
            Some(key) => Value::Array(merge_keyed(path, key, parent, child)),
            None => {
                let mut merged = parent;
                for item in child {
                    if !merged.contains(&item) {
                        merged.push(item);
                    }
                }
                Value::Array(merged)
            }
        },
        // A scalar, null, or a change of type: the child's value stands.
        (_, child) => child,
    }
}

fn merge_keyed(path: &str, key: &str, parent: Vec<Value>, child: Vec<Value>) -> Vec<Value> {
    let mut merged = parent;
    for item in child {
        let id = item.get(key).cloned();
        let existing = id
            .as_ref()
            .and_then(|id| merged.iter().position(|entry| entry.get(key) == Some(id)));
        match existing {
            Some(index) => {
                let parent_item = std::mem::take(&mut merged[index]);
                merged[index] = merge_at(&format!("{path}[]"), parent_item, item);
            }
            None => merged.push(item),
        }
    }
    merged
}

/// A child that declares a path as one kind of node (file, directory, link) removes the
/// parent's entries of the other kinds at that path.
fn evict_retyped_paths(parent: &mut Map<String, Value>, child: &Map<String, Value>) {
    for kind in NODE_LISTS {
        let declared: BTreeSet<String> = child
            .get(kind)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.get("path").and_then(Value::as_str).map(str::to_owned))
            .collect();
        if declared.is_empty() {
            continue;
        }
        for other in NODE_LISTS.iter().filter(|other| **other != kind) {
            if let Some(entries) = parent.get_mut(*other).and_then(Value::as_array_mut) {
                entries.retain(|entry| {
                    entry
                        .get("path")
                        .and_then(Value::as_str)
                        .is_none_or(|path| !declared.contains(path))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use sha2::Digest as _;

    use super::*;

    const AUTHORITY: &str = "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n";

    /// A web of documents by URL; every request is recorded.
    struct Web {
        documents: BTreeMap<String, Vec<u8>>,
        requests: Vec<FetchRequest>,
    }

    impl Web {
        fn new(documents: &[(&str, Value)]) -> Web {
            Web {
                documents: documents
                    .iter()
                    .map(|(url, value)| (url.to_string(), serde_json::to_vec(value).unwrap()))
                    .collect(),
                requests: Vec::new(),
            }
        }

        fn resolve(&mut self, root: &Value) -> Result<Resolved, Rejected> {
            let documents = self.documents.clone();
            let requests = &mut self.requests;
            resolve(
                "fw_cfg opt/com.coreos/config",
                &serde_json::to_vec(root).unwrap(),
                &mut |request| {
                    requests.push(request.clone());
                    documents
                        .get(&request.url)
                        .cloned()
                        .ok_or_else(|| format!("GET {}: 404 Not Found", request.url))
                },
            )
        }
    }

    fn sha512(bytes: &[u8]) -> String {
        format!("sha512-{}", hex::encode(sha2::Sha512::digest(bytes)))
    }

    fn file(path: &str, text: &str) -> Value {
        json!({ "path": path, "contents": { "source": format!("data:,{text}") } })
    }

    fn ignition(version: &str, rest: Value) -> Value {
        let mut document = json!({ "ignition": { "version": version } });
        for (key, value) in rest.as_object().unwrap() {
            if key == "ignition" {
                for (inner, value) in value.as_object().unwrap() {
                    document["ignition"][inner] = value.clone();
                }
            } else {
                document[key] = value.clone();
            }
        }
        document
    }

    fn loaded(resolved: &Resolved) -> crate::Loaded {
        crate::load("test", &resolved.document).unwrap()
    }

    fn file_text(loaded: &crate::Loaded, path: &str) -> Option<String> {
        loaded.plan.files.iter().find_map(|file| {
            (file.path == std::path::Path::new(path)).then(|| match &file.contents {
                crate::plan::Contents::Inline(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                other => panic!("{path} is not inline: {other:?}"),
            })
        })
    }

    #[test]
    fn a_replacement_stands_in_for_the_whole_config() {
        let replacement = ignition(
            "3.4.0",
            json!({ "storage": { "files": [file("/etc/hostname", "replaced")] } }),
        );
        let hash = sha512(&serde_json::to_vec(&replacement).unwrap());
        let mut web = Web::new(&[("https://boot.example/node.ign", replacement)]);
        let pointer = ignition(
            "3.0.0",
            json!({
                "ignition": { "config": { "replace": {
                    "source": "https://boot.example/node.ign",
                    "verification": { "hash": hash } } } },
                "storage": { "files": [file("/etc/motd", "from the pointer")] },
            }),
        );
        let resolved = web.resolve(&pointer).unwrap();
        assert_eq!(
            resolved.fetched,
            ["config replaced by https://boot.example/node.ign"]
        );
        let loaded = loaded(&resolved);
        assert_eq!(loaded.plan.hostname.as_deref(), Some("replaced"));
        assert_eq!(
            file_text(&loaded, "/etc/motd"),
            None,
            "the pointer's own files are gone"
        );
        assert!(
            loaded.warnings.iter().all(|w| w.field != "ignition.config"),
            "a resolved config names no pointers: {:?}",
            loaded.warnings
        );
    }

    #[test]
    fn merged_configs_are_laid_over_in_order() {
        let first = ignition(
            "3.2.0",
            json!({ "storage": { "files": [
                file("/etc/a", "first"),
                file("/etc/b", "first"),
            ] } }),
        );
        let second = ignition(
            "3.1.0",
            json!({ "storage": { "files": [file("/etc/b", "second")] } }),
        );
        let mut web = Web::new(&[("http://m/1.ign", first), ("http://m/2.ign", second)]);
        let base = ignition(
            "3.0.0",
            json!({
                "ignition": { "config": { "merge": [
                    { "source": "http://m/1.ign" }, { "source": "http://m/2.ign" } ] } },
                "storage": { "files": [file("/etc/a", "base"), file("/etc/c", "base")] },
            }),
        );
        let resolved = web.resolve(&base).unwrap();
        assert_eq!(
            resolved.fetched,
            ["merged http://m/1.ign", "merged http://m/2.ign"]
        );
        let loaded = loaded(&resolved);
        assert_eq!(file_text(&loaded, "/etc/a").as_deref(), Some("first"));
        assert_eq!(file_text(&loaded, "/etc/b").as_deref(), Some("second"));
        assert_eq!(file_text(&loaded, "/etc/c").as_deref(), Some("base"));
        let document: Value = serde_json::from_slice(&resolved.document).unwrap();
        assert_eq!(
            document["ignition"]["version"], "3.2.0",
            "the newest version wins"
        );
        assert!(document["ignition"].get("config").is_none());
    }

    #[test]
    fn a_hash_mismatch_rejects_the_config_naming_the_field_and_both_digests() {
        let replacement = ignition("3.4.0", json!({}));
        let actual = sha512(&serde_json::to_vec(&replacement).unwrap());
        let expected = sha512(b"something else");
        let mut web = Web::new(&[("http://p/r.ign", replacement)]);
        let pointer = ignition(
            "3.4.0",
            json!({ "ignition": { "config": { "replace": {
                "source": "http://p/r.ign", "verification": { "hash": expected } } } } }),
        );
        let rejected = web.resolve(&pointer).unwrap_err();
        let error = rejected.errors().next().unwrap();
        assert_eq!(error.field, "ignition.config.replace");
        let expected_hex = expected.trim_start_matches("sha512-");
        let actual_hex = actual.trim_start_matches("sha512-");
        assert_eq!(
            error.reason,
            format!("http://p/r.ign: digest mismatch: expected {expected_hex}, got {actual_hex}")
        );
    }

    #[test]
    fn a_config_that_cannot_be_fetched_rejects_the_whole_config() {
        let mut web = Web::new(&[]);
        let pointer = ignition(
            "3.4.0",
            json!({
                "ignition": { "config": { "merge": [{ "source": "http://p/missing.ign" }] } },
                "storage": { "files": [file("/etc/hostname", "kept?")] },
            }),
        );
        let rejected = web.resolve(&pointer).unwrap_err();
        let error = rejected.errors().next().unwrap();
        assert_eq!(error.field, "ignition.config.merge[0]");
        assert_eq!(error.reason, "GET http://p/missing.ign: 404 Not Found");
        assert_eq!(rejected.errors().count(), 1);
    }

    #[test]
    fn a_fetched_document_that_is_not_ignition_is_refused() {
        let mut web = Web::new(&[("http://p/x", json!({ "hello": 1 }))]);
        let pointer = ignition(
            "3.4.0",
            json!({ "ignition": { "config": { "replace": { "source": "http://p/x" } } } }),
        );
        let error = web.resolve(&pointer).unwrap_err();
        let error = error.errors().next().unwrap().clone();
        assert_eq!(error.field, "ignition.config.replace");
        assert_eq!(
            error.reason,
            "http://p/x is not an Ignition config: it has no \"ignition\" section"
        );
    }

    #[test]
    fn configs_that_name_each_other_stop_at_the_depth_limit() {
        let looping = ignition(
            "3.4.0",
            json!({ "ignition": { "config": { "replace": { "source": "http://p/loop.ign" } } } }),
        );
        let mut web = Web::new(&[("http://p/loop.ign", looping.clone())]);
        let error = web.resolve(&looping).unwrap_err();
        let error = error.errors().next().unwrap().clone();
        assert!(
            error.reason.starts_with(&format!(
                "pointer configs nest deeper than {MAX_DEPTH} levels at \"http://p/loop.ign\""
            )),
            "{}",
            error.reason
        );
        assert_eq!(web.requests.len(), MAX_DEPTH - 1);
        assert_eq!(
            error.field, "http://p/loop.ign ignition.config.replace",
            "a nested field is named with the config it came from"
        );
    }

    #[test]
    fn authorities_serve_the_fetches_below_them_and_end_up_inline() {
        let replacement = ignition(
            "3.4.0",
            json!({ "ignition": { "security": { "tls": { "certificateAuthorities": [
                { "source": "http://p/ca.pem", "verification": { "hash": sha512(AUTHORITY.as_bytes()) } }
            ] } } } }),
        );
        let mut web = Web::new(&[("https://p/node.ign", replacement)]);
        web.documents
            .insert("http://p/ca.pem".into(), AUTHORITY.as_bytes().to_vec());
        let pointer = ignition(
            "3.4.0",
            json!({ "ignition": {
                "config": { "replace": { "source": "https://p/node.ign" } },
                "security": { "tls": { "certificateAuthorities": [
                    { "source": "data:,-----BEGIN%20CERTIFICATE-----%0AQUJD%0A-----END%20CERTIFICATE-----%0A" }
                ] } } } }),
        );
        let resolved = web.resolve(&pointer).unwrap();
        let requests: Vec<(&str, usize)> = web
            .requests
            .iter()
            .map(|request| (request.url.as_str(), request.authorities.len()))
            .collect();
        // The replacement is fetched trusting the pointer's authority; the replacement's own
        // authority is fetched with its parent's only.
        assert_eq!(
            requests,
            [("https://p/node.ign", 1), ("http://p/ca.pem", 1)]
        );
        assert!(web.requests[0].authorities[0].contains("QUJD"));
        let loaded = loaded(&resolved);
        assert_eq!(loaded.plan.trusted_authorities, [AUTHORITY.to_owned()]);
        assert!(!needs_fetching(&resolved.document));
    }

    #[test]
    fn merging_follows_ignitions_rules() {
        let parent = json!({
            "ignition": { "version": "3.1.0" },
            "storage": {
                "files": [
                    { "path": "/etc/a", "mode": 420, "append": [{ "source": "data:,1" }] },
                    { "path": "/etc/x" },
                ],
                "directories": [{ "path": "/etc/d" }],
            },
            "passwd": { "users": [{ "name": "core", "sshAuthorizedKeys": ["k1"] }] },
        });
        let child = json!({
            "ignition": { "version": "3.0.0" },
            "storage": {
                "files": [
                    { "path": "/etc/a", "append": [{ "source": "data:,2" }] },
                    { "path": "/etc/d" },
                ],
                "links": [{ "path": "/etc/x", "target": "/etc/a" }],
            },
            "passwd": { "users": [{ "name": "core", "sshAuthorizedKeys": ["k1", "k2"] }] },
        });
        let merged = merge(parent, child);
        assert_eq!(
            merged,
            json!({
                "ignition": { "version": "3.1.0" },
                "storage": {
                    "files": [
                        { "path": "/etc/a", "mode": 420,
                          "append": [{ "source": "data:,1" }, { "source": "data:,2" }] },
                        { "path": "/etc/d" },
                    ],
                    "directories": [],
                    "links": [{ "path": "/etc/x", "target": "/etc/a" }],
                },
                "passwd": { "users": [{ "name": "core", "sshAuthorizedKeys": ["k1", "k2"] }] },
            })
        );
    }

    #[test]
    fn only_documents_with_remote_pointers_need_the_network() {
        let inline_only = ignition(
            "3.4.0",
            json!({ "ignition": { "security": { "tls": { "certificateAuthorities": [
                { "source": "data:,x" } ] } } } }),
        );
        assert!(!needs_fetching(&serde_json::to_vec(&inline_only).unwrap()));
        let pointer = ignition(
            "3.4.0",
            json!({ "ignition": { "config": { "merge": [{ "source": "http://p/m" }] } } }),
        );
        assert!(needs_fetching(&serde_json::to_vec(&pointer).unwrap()));
        assert!(!needs_fetching(b"#cloud-config\n"));
    }

    #[test]
    fn read_offline_an_unresolved_pointer_is_a_warning_that_says_so() {
        let pointer = ignition(
            "3.4.0",
            json!({ "ignition": { "config": { "replace": { "source": "http://p/r" } } } }),
        );
        let loaded = crate::load("node.ign", &serde_json::to_vec(&pointer).unwrap()).unwrap();
        let warning = loaded
            .warnings
            .iter()
            .find(|warning| warning.field == "ignition.config")
            .unwrap();
        assert!(warning
            .reason
            .contains("the node fetches and verifies them at boot"));
    }
}
