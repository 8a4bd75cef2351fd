//! What a container runs: its image's config overlaid with its pod's container, by the
//! rules Kubernetes documents:
//!
//! | container `command` | container `args` | runs |
//! |---|---|---|
//! | — | — | image entrypoint + image cmd |
//! | set | — | command (the image's cmd is ignored too) |
//! | — | set | image entrypoint + args |
//! | set | set | command + args |
//!
//! The environment is the image's, then the container's (a name given twice takes the
//! container's value), with a default `PATH` when neither sets one; the working directory
//! is the container's, else the image's, else `/`.

use std::collections::BTreeMap;

/// The `PATH` a container gets when its image and pod set none (runc's and containerd's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the image's config says (its `config` section).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageProcess {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    pub user: Option<String>,
}

impl ImageProcess {
    /// Reads the process section of an OCI image config.
    pub fn from_config(config: &oci_spec::image::ImageConfiguration) -> ImageProcess {
        let Some(process) = config.config() else {
            return ImageProcess::default();
        };
        ImageProcess {
            entrypoint: process.entrypoint().clone().unwrap_or_default(),
            cmd: process.cmd().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            working_dir: process.working_dir().clone().filter(|dir| !dir.is_empty()),
            user: process.user().clone().filter(|user| !user.is_empty()),
        }
    }
}

/// What the pod's container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRequest {
    /// `command`: replaces the entrypoint.
    pub command: Option<Vec<String>>,
    /// `args`: replaces the cmd.
    pub args: Option<Vec<String>>,
    /// `env`, in order.
    pub env: Vec<(String, String)>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// `securityContext.runAsUser` / `runAsGroup`.
    pub run_as: Option<(u32, Option<u32>)>,
}

/// Who the process runs as: numbers, or a name to look up in the image's `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// A uid and, when known, a gid.
    Id {
        /// User id.
        uid: u32,
        /// Group id; `None` takes the user's primary group from `/etc/passwd` (or 0).
        gid: Option<u32>,
    },
    /// A name (and group) resolved in the container's root.
    Name {
        /// User name or number.
        user: String,
        /// Group name or number.
        group: Option<String>,
    },
}

/// The process a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// `argv`, the program first.
    pub args: Vec<String>,
    /// `NAME=value`, sorted by the order they were given, duplicates resolved.
    pub env: Vec<String>,
    /// Working directory, absolute.
    pub cwd: String,
    /// Who it runs as.
    pub user: User,
}

/// Why a container cannot be given a process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// Nothing to run.
    #[error(
        "nothing to run: the image has no entrypoint or cmd and the container gives no \
         command; give one (keelctl run NAME --image REF -- COMMAND…)"
    )]
    NothingToRun,
    /// A relative working directory.
    #[error("the working directory {0:?} is not absolute")]
    RelativeWorkingDir(String),
    /// An environment variable name that cannot be one.
    #[error("{0:?} is not an environment variable name (letters, digits and '_', not starting with a digit)")]
    BadEnvName(String),
    /// A user the image names in a form that is not `user[:group]`.
    #[error("the image's user {0:?} is not user[:group]")]
    BadUser(String),
}

/// Resolves the process of a container. Pure.
pub fn resolve(
    image: &ImageProcess,
    request: &ContainerRequest,
) -> Result<ProcessSpec, ProcessError> {
    let args: Vec<String> = match (&request.command, &request.args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if args.is_empty() || args[0].is_empty() {
        return Err(ProcessError::NothingToRun);
    }
    let cwd = request
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .unwrap_or_else(|| "/".to_owned());
    if !cwd.starts_with('/') {
        return Err(ProcessError::RelativeWorkingDir(cwd));
    }
    Ok(ProcessSpec {
        args,
        env: environment(image, request)?,
        cwd,
        user: user(image, request)?,
    })
}

fn environment(
    image: &ImageProcess,
    request: &ContainerRequest,
) -> Result<Vec<String>, ProcessError> {
    // Order of first appearance, value of last: what a shell would export.
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |order: &mut Vec<String>, name: &str, value: &str| {
        if values.insert(name.to_owned(), value.to_owned()).is_none() {
            order.push(name.to_owned());
        }
    };
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(&mut order, name, value);
    }
    for (name, value) in &request.env {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ProcessError::BadEnvName(name.clone()));
        }
        set(&mut order, name, value);
    }
    if !order.iter().any(|name| name == "PATH") {
        set(&mut order, "PATH", DEFAULT_PATH);
    }
    Ok(order
        .iter()
        .map(|name| format!("{name}={}", values[name]))
        .collect())
}

fn user(image: &ImageProcess, request: &ContainerRequest) -> Result<User, ProcessError> {
    if let Some((uid, gid)) = request.run_as {
        return Ok(User::Id { uid, gid });
    }
    let Some(text) = &image.user else {
        return Ok(User::Id {
            uid: 0,
            gid: Some(0),
        });
    };
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text.as_str(), None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(ProcessError::BadUser(text.clone()));
    }
    match (user.parse::<u32>(), group.map(str::parse::<u32>)) {
        (Ok(uid), None) => Ok(User::Id { uid, gid: None }),
        (Ok(uid), Some(Ok(gid))) => Ok(User::Id {
            uid,
            gid: Some(gid),
        }),
        _ => Ok(User::Name {
            user: user.to_owned(),
            group: group.map(str::to_owned),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn image() -> ImageProcess {
        ImageProcess {
            entrypoint: strings(&["/entry"]),
            cmd: strings(&["--serve"]),
            env: strings(&["PATH=/bin", "MODE=image", "EMPTY"]),
            working_dir: Some("/app".into()),
            user: None,
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let run = |command: Option<&[&str]>, args: Option<&[&str]>| {
            let request = ContainerRequest {
                command: command.map(strings),
                args: args.map(strings),
                ..ContainerRequest::default()
            };
            resolve(&image(), &request).unwrap().args
        };
        assert_eq!(run(None, None), ["/entry", "--serve"]);
        assert_eq!(run(Some(&["/bin/sh"]), None), ["/bin/sh"]);
        assert_eq!(run(None, Some(&["--once"])), ["/entry", "--once"]);
        assert_eq!(
            run(Some(&["/bin/sh"]), Some(&["-c", "true"])),
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn nothing_to_run_says_what_to_do() {
        let error = resolve(&ImageProcess::default(), &ContainerRequest::default()).unwrap_err();
        assert_eq!(error, ProcessError::NothingToRun);
        assert!(error
            .to_string()
            .contains("keelctl run NAME --image REF -- COMMAND"));
    }

    #[test]
    fn the_containers_environment_wins_and_path_has_a_default() {
        let request = ContainerRequest {
            env: vec![("MODE".into(), "pod".into()), ("EXTRA".into(), "1".into())],
            ..ContainerRequest::default()
        };
        let spec = resolve(&image(), &request).unwrap();
        assert_eq!(spec.env, ["PATH=/bin", "MODE=pod", "EMPTY=", "EXTRA=1"]);
        assert_eq!(spec.cwd, "/app");
        let bare = ImageProcess {
            cmd: strings(&["/bin/true"]),
            ..ImageProcess::default()
        };
        let spec = resolve(&bare, &ContainerRequest::default()).unwrap();
        assert_eq!(spec.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(spec.cwd, "/");
        assert_eq!(
            spec.user,
            User::Id {
                uid: 0,
                gid: Some(0)
            }
        );
        let bad = ContainerRequest {
            env: vec![("1X".into(), "v".into())],
            ..ContainerRequest::default()
        };
        assert_eq!(
            resolve(&bare, &bad),
            Err(ProcessError::BadEnvName("1X".into()))
        );
    }

    #[test]
    fn users_are_numbers_or_names_to_look_up() {
        let with_user = |user: &str| ImageProcess {
            user: Some(user.into()),
            ..image()
        };
        let user_of =
            |user: &str| resolve(&with_user(user), &ContainerRequest::default()).map(|s| s.user);
        assert_eq!(
            user_of("1000"),
            Ok(User::Id {
                uid: 1000,
                gid: None
            })
        );
        assert_eq!(
            user_of("1000:50"),
            Ok(User::Id {
                uid: 1000,
                gid: Some(50)
            })
        );
        assert_eq!(
            user_of("nobody:nogroup"),
            Ok(User::Name {
                user: "nobody".into(),
                group: Some("nogroup".into())
            })
        );
        assert_eq!(user_of(":5"), Err(ProcessError::BadUser(":5".into())));
        let forced = ContainerRequest {
            run_as: Some((7, Some(8))),
            ..ContainerRequest::default()
        };
        assert_eq!(
            resolve(&with_user("nobody"), &forced).unwrap().user,
            User::Id {
                uid: 7,
                gid: Some(8)
            }
        );
    }
}
