//! `keelctl validate`: the node's own config check, offline.
//!
//! The file goes through exactly what a node does with a config it is handed:
//! `keelson_config::load` (format detection, translation, whole-config validation) and the
//! API certificate check. The errors and warnings are printed as the node prints them on
//! its console, so a config checked here is refused (or accepted) by a node in the same
//! words.

use std::io::Read;
use std::path::Path;

use keelson_config::Diagnostic;
use serde::Serialize;

use crate::output::Format;

/// What `-o json|yaml` prints.
#[derive(Debug, Serialize)]
pub struct Validation {
    /// The file checked.
    pub file: String,
    /// Whether a node would accept it.
    pub valid: bool,
    /// The format it was written in, when it was recognised.
    pub format: Option<String>,
    /// Errors: any one makes a node refuse the config.
    pub errors: Vec<Diagnostic>,
    /// Warnings: keys a node does not honour.
    pub warnings: Vec<Diagnostic>,
}

/// Checks `file` the way a node would. Pure apart from the file itself.
pub fn validate_bytes(file: &str, bytes: &[u8]) -> Validation {
    let checked = keelson_config::load(file, bytes)
        .and_then(|loaded| keelson_api::tls::check_config_pki(file, loaded));
    match checked {
        Ok(loaded) => Validation {
            file: file.to_owned(),
            valid: true,
            format: Some(loaded.format.to_string()),
            errors: Vec::new(),
            warnings: loaded.warnings,
        },
        Err(rejected) => {
            let (errors, warnings) = rejected
                .diagnostics
                .into_iter()
                .partition(Diagnostic::is_error);
            Validation {
                file: file.to_owned(),
                valid: false,
                format: keelson_config::detect(bytes)
                    .ok()
                    .map(|format| format.to_string()),
                errors,
                warnings,
            }
        }
    }
}

/// Runs `keelctl validate -f FILE`; `Ok(false)` (exit status 1) when a node would refuse it.
pub fn run(file: &Path, format: Format) -> anyhow::Result<bool> {
    let name = file.display().to_string();
    let bytes = if name == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        bytes
    } else {
        std::fs::read(file).map_err(|error| anyhow::anyhow!("cannot read {name}: {error}"))?
    };
    let validation = validate_bytes(&name, &bytes);
    match format {
        Format::Table | Format::Wide => {
            for diagnostic in validation.errors.iter().chain(&validation.warnings) {
                println!("{diagnostic}");
            }
            println!("{}", summary(&validation));
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&validation)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&validation)?),
    }
    Ok(validation.valid)
}

/// The closing line.
fn summary(validation: &Validation) -> String {
    let format = validation.format.as_deref().unwrap_or("unrecognised");
    let warnings = match validation.warnings.len() {
        0 => String::new(),
        1 => ", 1 warning".to_owned(),
        n => format!(", {n} warnings"),
    };
    if validation.valid {
        format!("{}: valid {format} config{warnings}", validation.file)
    } else {
        let errors = match validation.errors.len() {
            1 => "1 error".to_owned(),
            n => format!("{n} errors"),
        };
        format!(
            "{}: a node would refuse this {format} config: {errors}{warnings}",
            validation.file
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_native_config_passes_with_its_format() {
        let validation = validate_bytes(
            "node.yaml",
            b"apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nhostname: worker-1\n",
        );
        assert!(validation.valid, "{validation:?}");
        assert_eq!(summary(&validation), "node.yaml: valid native config");
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let validation = validate_bytes(
            "bad.yaml",
            b"apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nfiles:\n  - path: etc/x\n    content: x\n",
        );
        assert!(!validation.valid);
        assert_eq!(validation.errors.len(), 1, "{validation:?}");
        let line = validation.errors[0].to_string();
        assert!(
            line.starts_with("error: bad.yaml: files[0].path: "),
            "{line}"
        );
        assert_eq!(
            summary(&validation),
            "bad.yaml: a node would refuse this native config: 1 error"
        );
    }
}
