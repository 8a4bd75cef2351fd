//! Lifecycle hooks: `postStart`, run as the container starts (a failure kills it, and
//! its restart policy decides), and `preStop`, run before the container is sent SIGTERM
//! (its time counts against the grace period). Each is an `exec`, an `httpGet` or a
//! `sleep`. Pure: the pod's task runs them.

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};

use crate::probes::{check_of, Check};

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `lifecycle.postStart`.
    PostStart,
    /// `lifecycle.preStop`.
    PreStop,
}

impl Hook {
    /// How the kubelet's events name its failure.
    pub fn failed_reason(self) -> &'static str {
        match self {
            Hook::PostStart => "FailedPostStartHook",
            Hook::PreStop => "FailedPreStopHook",
        }
    }
}

/// The container's `hook`, checked, if it has one.
pub fn hook_of(container: &Container, hook: Hook) -> Result<Option<Check>, String> {
    let lifecycle = container.lifecycle.as_ref();
    let (field, handler) = match hook {
        Hook::PostStart => (
            "lifecycle.postStart",
            lifecycle.and_then(|l| l.post_start.as_ref()),
        ),
        Hook::PreStop => (
            "lifecycle.preStop",
            lifecycle.and_then(|l| l.pre_stop.as_ref()),
        ),
    };
    let Some(handler) = handler else {
        return Ok(None);
    };
    check_handler(container, handler)
        .map(Some)
        .map_err(|error| format!("{field}: {error}"))
}

fn check_handler(container: &Container, handler: &LifecycleHandler) -> Result<Check, String> {
    const CHOICES: &str = "exec, httpGet and sleep";
    if handler.tcp_socket.is_some() {
        return Err("tcpSocket is not a hook handler (Kubernetes keeps it only to read old objects): use exec, httpGet or sleep".into());
    }
    if let Some(sleep) = &handler.sleep {
        if handler.exec.is_some() || handler.http_get.is_some() {
            return Err(format!("needs exactly one of {CHOICES}"));
        }
        return u64::try_from(sleep.seconds)
            .map(Check::Sleep)
            .map_err(|_| format!("sleep.seconds {} must not be negative", sleep.seconds));
    }
    check_of(
        container,
        handler.exec.as_ref(),
        handler.http_get.as_ref(),
        None,
        CHOICES,
    )
}

/// Checks both hooks of a container.
pub fn check(container: &Container) -> Result<(), String> {
    hook_of(container, Hook::PostStart)?;
    hook_of(container, Hook::PreStop)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn container(lifecycle: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "web", "image": "x",
            "ports": [{"name": "admin", "containerPort": 9000}], "lifecycle": lifecycle}))
        .unwrap()
    }

    #[test]
    fn hooks_are_exec_http_or_sleep() {
        let web = container(serde_json::json!({
            "postStart": {"exec": {"command": ["sh", "-c", "echo up"]}},
            "preStop": {"httpGet": {"port": "admin", "path": "/drain"}}
        }));
        assert_eq!(
            hook_of(&web, Hook::PostStart).unwrap(),
            Some(Check::Exec(vec![
                "sh".into(),
                "-c".into(),
                "echo up".into()
            ]))
        );
        assert!(matches!(
            hook_of(&web, Hook::PreStop).unwrap(),
            Some(Check::Http { port: 9000, ref path, .. }) if path == "/drain"
        ));
        let sleepy = container(serde_json::json!({"preStop": {"sleep": {"seconds": 5}}}));
        assert_eq!(
            hook_of(&sleepy, Hook::PreStop).unwrap(),
            Some(Check::Sleep(5))
        );
        assert_eq!(hook_of(&sleepy, Hook::PostStart).unwrap(), None);
        let tcp = container(serde_json::json!({"preStop": {"tcpSocket": {"port": 80}}}));
        assert!(check(&tcp)
            .unwrap_err()
            .starts_with("lifecycle.preStop: tcpSocket is not a hook handler"));
        let none = container(serde_json::json!({"postStart": {}}));
        assert_eq!(
            check(&none).unwrap_err(),
            "lifecycle.postStart: needs exactly one of exec, httpGet and sleep"
        );
    }
}
