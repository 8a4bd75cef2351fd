//! From bytes to a checked configuration: detect the format, translate, validate.

use std::fmt;

use crate::cloud_init::{self, MetaData, CLOUD_CONFIG_HEADER};
use crate::diagnostic::{Diagnostic, Findings};
use crate::ignition;
use crate::model::MachineConfig;
use crate::native;
use crate::plan::{self, Origins, Plan};

/// The formats a user-data document may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `keelson.dev/v1alpha1` `MachineConfig` YAML (or JSON).
    Native,
    /// Ignition JSON, spec 3.
    Ignition,
    /// `#cloud-config` YAML.
    CloudConfig,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Native => "native",
            Format::Ignition => "ignition",
            Format::CloudConfig => "cloud-config",
        })
    }
}

/// Why a document that is neither a `#cloud-config` nor a script failed to parse as YAML
/// (JSON is YAML too). The parser's alias limit is named as such: a document that expands
/// its aliases past it is refused, and saying only "not YAML" would hide why.
fn yaml_failure(text: &str, error: &str) -> String {
    if error.contains("repetition limit exceeded") {
        return format!(
            "the YAML expands its aliases (&anchor … *anchor) past the parser's limit \
             ({error}); write the values out instead of nesting aliases"
        );
    }
    let looks_native = text
        .lines()
        .map(str::trim_start)
        .any(|line| line.starts_with("apiVersion:") || line.starts_with("kind:"));
    if looks_native {
        format!("this MachineConfig is not valid YAML: {error}")
    } else {
        format!("not a #cloud-config (no header line), not JSON and not YAML either: {error}")
    }
}

/// Works out which format `bytes` are in, or says why none fits.
pub fn detect(bytes: &[u8]) -> Result<Format, String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with(CLOUD_CONFIG_HEADER) {
        return Ok(Format::CloudConfig);
    }
    if text.starts_with("#!") {
        return Err(
            "a user-data script cannot run: Keelson has no shell; give a \
                    #cloud-config, an Ignition config or a MachineConfig"
                .to_owned(),
        );
    }
    if text
        .to_ascii_lowercase()
        .starts_with("content-type: multipart")
    {
        return Err("MIME multipart user-data is not supported; give one document".to_owned());
    }
    if text.is_empty() {
        return Err("the document is empty".to_owned());
    }
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|error| yaml_failure(text, &error.to_string()))?;
    if value.get("apiVersion").is_some() || value.get("kind").is_some() {
        return Ok(Format::Native);
    }
    if value.get("ignition").is_some() {
        if text.starts_with('{') {
            return Ok(Format::Ignition);
        }
        return Err(
            "this looks like a Butane config (YAML with an ignition section); \
                    translate it to Ignition JSON with butane first"
                .to_owned(),
        );
    }
    Err(
        "unrecognised format: expected a #cloud-config (first line), Ignition JSON \
         ({\"ignition\": {\"version\": \"3.x.0\"}}) or a keelson.dev/v1alpha1 MachineConfig"
            .to_owned(),
    )
}

/// A configuration that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The user-data format it was written in.
    pub format: Format,
    /// The native form (what is saved on STATE).
    pub config: MachineConfig,
    /// The checked, typed form (what is applied).
    pub plan: Plan,
    /// Warnings: keys Keelson does not honour.
    pub warnings: Vec<Diagnostic>,
}

/// A configuration that failed validation: nothing of it may be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Every error and warning found.
    pub diagnostics: Vec<Diagnostic>,
}

impl Rejected {
    /// Only the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<String> = self.errors().map(ToString::to_string).collect();
        f.write_str(&errors.join("\n"))
    }
}

/// Detects, translates and validates one user-data document named `source`.
pub fn load(source: &str, bytes: &[u8]) -> Result<Loaded, Rejected> {
    let mut findings = Findings::new(source);
    let translated = translate(bytes, &mut findings);
    finish(translated, findings)
}

fn translate(bytes: &[u8], findings: &mut Findings) -> Option<(Format, MachineConfig, Origins)> {
    let format = match detect(bytes) {
        Ok(format) => format,
        Err(reason) => {
            findings.error("$", reason);
            return None;
        }
    };
    let (config, origins) = match format {
        Format::Native => (native::parse(bytes, findings)?, Origins::default()),
        Format::Ignition => ignition::translate(bytes, findings)?,
        Format::CloudConfig => cloud_init::translate(bytes, findings)?,
    };
    Some((format, config, origins))
}

fn finish(
    translated: Option<(Format, MachineConfig, Origins)>,
    mut findings: Findings,
) -> Result<Loaded, Rejected> {
    let checked = translated.and_then(|(format, config, origins)| {
        let plan = plan::plan(&config, &origins, &mut findings)?;
        Some((format, config, plan))
    });
    match checked {
        Some((format, config, plan)) if !findings.has_errors() => Ok(Loaded {
            format,
            config,
            plan,
            warnings: findings.diagnostics,
        }),
        _ => Err(Rejected {
            diagnostics: findings.diagnostics,
        }),
    }
}

/// The files of a NoCloud seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCloudSeed<'a> {
    /// `meta-data` (required by cloud-init, may be empty).
    pub meta_data: Option<&'a [u8]>,
    /// `user-data`: `#cloud-config`, Ignition JSON or a MachineConfig.
    pub user_data: Option<&'a [u8]>,
    /// `network-config`, version 2.
    pub network_config: Option<&'a [u8]>,
}

/// Reads the `meta-data` of a seed alone (to compare its instance-id with the saved one).
pub fn nocloud_meta_data(meta_data: &[u8]) -> Result<MetaData, Rejected> {
    let mut findings = Findings::new("nocloud meta-data");
    cloud_init::parse_meta_data(meta_data, &mut findings).ok_or(Rejected {
        diagnostics: findings.diagnostics,
    })
}

/// Translates and validates a whole NoCloud seed. `network-config`, when present, replaces
/// any network section of the user-data (as in cloud-init); `local-hostname` from
/// meta-data is the hostname when user-data names none.
pub fn load_nocloud(seed: &NoCloudSeed<'_>) -> Result<(Loaded, MetaData), Rejected> {
    let mut findings = Findings::new("nocloud user-data");
    let meta = {
        let mut meta_findings = Findings::new("nocloud meta-data");
        let meta =
            cloud_init::parse_meta_data(seed.meta_data.unwrap_or_default(), &mut meta_findings);
        findings.diagnostics.extend(meta_findings.diagnostics);
        meta
    };
    let user_data = seed
        .user_data
        .filter(|bytes| !bytes.iter().all(u8::is_ascii_whitespace));
    let mut translated = match user_data {
        Some(bytes) => translate(bytes, &mut findings),
        // cloud-init treats missing user-data as an empty cloud-config.
        None => Some((
            Format::CloudConfig,
            MachineConfig::empty(),
            Origins::default(),
        )),
    };
    if let Some(bytes) = seed.network_config {
        let mut network_findings = Findings::new("nocloud network-config");
        let network = cloud_init::translate_network_config(bytes, &mut network_findings);
        findings.diagnostics.extend(network_findings.diagnostics);
        if let (Some((_, config, origins)), Some((network, network_origins))) =
            (translated.as_mut(), network)
        {
            if !config.network.is_empty() {
                findings.warning(
                    "network",
                    "replaced by the seed's network-config, which takes precedence",
                );
            }
            config.network = network;
            origins.merge_from(network_origins, "nocloud network-config", str::to_owned);
        }
    }
    if let (Some((_, config, origins)), Some(meta)) = (translated.as_mut(), meta.as_ref()) {
        if config.hostname.is_none() {
            if let Some(hostname) = &meta.local_hostname {
                let mut local = Origins::default();
                local.record("hostname", "local-hostname");
                origins.merge_from(local, "nocloud meta-data", str::to_owned);
                config.hostname = Some(hostname.clone());
            }
        }
    }
    let loaded = finish(translated, findings)?;
    Ok((loaded, meta.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_past_the_limit_are_named_as_such() {
        let mut doc = String::from(
            "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for level in 1..9 {
            let previous = format!("*a{}", level - 1);
            let list = [previous.as_str(); 10].join(", ");
            doc.push_str(&format!("a{level}: &a{level} [{list}]\n"));
        }
        let reason = detect(doc.as_bytes()).unwrap_err();
        assert!(
            reason.starts_with(
                "the YAML expands its aliases (&anchor … *anchor) past the parser's limit"
            ),
            "{reason}"
        );
        let broken = detect(b"apiVersion: keelson.dev/v1alpha1\nkind: [\n").unwrap_err();
        assert!(
            broken.starts_with("this MachineConfig is not valid YAML: "),
            "{broken}"
        );
    }

    #[test]
    fn formats_are_told_apart() {
        assert_eq!(
            detect(b"#cloud-config\nhostname: a\n"),
            Ok(Format::CloudConfig)
        );
        assert_eq!(
            detect(br#"{"ignition": {"version": "3.4.0"}}"#),
            Ok(Format::Ignition)
        );
        assert_eq!(
            detect(b"apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\n"),
            Ok(Format::Native)
        );
        assert!(detect(b"#!/bin/sh\necho hi\n")
            .unwrap_err()
            .contains("no shell"));
        assert!(detect(b"variant: fcos\nignition: {}\n")
            .unwrap_err()
            .contains("Butane"));
        assert!(detect(b"hostname: a\n")
            .unwrap_err()
            .contains("unrecognised"));
        assert!(detect(b"").is_err());
    }
}
