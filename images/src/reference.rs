//! Image references, normalised as Docker normalises them: `busybox` is
//! `docker.io/library/busybox:latest`, `ghcr.io/org/app@sha256:…` keeps its digest.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry a name without one refers to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a name without tag or digest refers to.
pub const DEFAULT_TAG: &str = "latest";

/// A normalised image reference: registry, repository, and a tag or a digest (or both).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`…
    pub registry: String,
    /// `library/busybox`, `org/app`…
    pub repository: String,
    /// `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// A pinned manifest digest.
    pub digest: Option<Digest>,
}

/// Why a text is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an image reference: {reason}")]
pub struct ReferenceError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// Parses and normalises `text`.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let refuse = |reason: String| ReferenceError {
            text: text.to_owned(),
            reason,
        };
        if text.is_empty() || text.len() > 4096 {
            return Err(refuse(
                "give a name such as busybox or ghcr.io/org/app:1.2".into(),
            ));
        }
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((name, digest)) => (
                name,
                Some(
                    digest
                        .parse::<Digest>()
                        .map_err(|error| refuse(error.to_string()))?,
                ),
            ),
            None => (text, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |index| index + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (
                    &name_and_tag[..colon],
                    Some(name_and_tag[colon + 1..].to_owned()),
                )
            }
            None => (name_and_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_repository(&repository).map_err(refuse)?;
        if let Some(tag) = &tag {
            check_tag(tag).map_err(refuse)?;
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What a registry is asked for: the digest when pinned, else the tag.
    pub fn manifest_tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(text)
    }
}

/// Path components: lower-case letters and digits, separated by `.`, `_`, `__` or `-`s.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for component in repository.split('/') {
        let valid = !component.is_empty()
            && component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "{component:?} in {repository:?}: repository components are lower-case \
                 letters and digits, separated by '.', '_' or '-'"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "the tag {tag:?} must be 1 to 128 letters, digits, '_', '.' or '-', not starting \
             with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(text: &str) -> String {
        Reference::parse(text).unwrap().to_string()
    }

    #[test]
    fn short_names_normalise_as_dockers_do() {
        assert_eq!(normal("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normal("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normal("example/busybox:1"), "docker.io/example/busybox:1");
        assert_eq!(
            normal("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(normal("ghcr.io/org/app"), "ghcr.io/org/app:latest");
        assert_eq!(normal("localhost/app:dev"), "localhost/app:dev");
        assert_eq!(
            normal("127.0.0.1:5000/test/busybox:1"),
            "127.0.0.1:5000/test/busybox:1"
        );
        let pinned = format!("quay.io/a/b@sha256:{}", "ab".repeat(32));
        assert_eq!(
            normal(&pinned),
            pinned,
            "a digest alone takes no default tag"
        );
    }

    #[test]
    fn bad_references_say_why() {
        let error = Reference::parse("Busybox").unwrap_err();
        assert!(error.reason.contains("lower-case"), "{error}");
        let error = Reference::parse("busybox:-x").unwrap_err();
        assert!(error.reason.contains("the tag \"-x\""), "{error}");
        let error = Reference::parse("busybox@sha256:12").unwrap_err();
        assert!(error.reason.contains("64 hex digits"), "{error}");
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("a//b").is_err());
    }
}
