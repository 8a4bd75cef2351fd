//! Probes, as the kubelet runs them: what a container's `startupProbe`, `livenessProbe`
//! and `readinessProbe` ask ([`probes_of`], with Kubernetes' defaults and the API
//! server's checks), and what their results mean ([`ProbeSet`]). Pure: the shell runs
//! the checks and reports each result.
//!
//! - Until the startup probe has succeeded, the other two do not run; when it fails
//!   `failureThreshold` times in a row, the container is killed and restarted as its
//!   policy says.
//! - The liveness probe kills and restarts the container after `failureThreshold`
//!   failures in a row.
//! - The readiness probe makes the container ready after `successThreshold` successes in
//!   a row and unready after `failureThreshold` failures; a container starts unready.

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, Probe as ProbeSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

impl Kind {
    /// `Startup`, `Liveness`, `Readiness`: how the kubelet's events name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A command in the container; exit 0 passes.
    Exec(Vec<String>),
    /// An HTTP GET; a status from 200 to 399 passes.
    Http {
        /// Over TLS (`scheme: HTTPS`), whose certificate is not verified, as the kubelet
        /// does not verify it.
        https: bool,
        /// The host (None: the pod's address).
        host: Option<String>,
        /// The port.
        port: u16,
        /// The path, with its query.
        path: String,
        /// More request headers.
        headers: Vec<(String, String)>,
    },
    /// A call of the gRPC Health Checking Protocol (`grpc.health.v1.Health/Check`) on
    /// the pod's address, in plain text; `SERVING` passes.
    Grpc {
        /// The port.
        port: u16,
        /// The service to ask about (None: the server as a whole).
        service: Option<String>,
    },
    /// A pause (a hook's `sleep`); it always passes.
    Sleep(u64),
    /// A TCP connection; one that opens passes.
    Tcp {
        /// The host (None: the pod's address).
        host: Option<String>,
        /// The port.
        port: u16,
    },
}

/// A probe with its timing, Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Which.
    pub kind: Kind,
    /// What it checks.
    pub check: Check,
    /// Seconds after the start before the first check.
    pub initial_delay: u64,
    /// Seconds between checks.
    pub period: u64,
    /// Seconds a check may take.
    pub timeout: u64,
    /// Successes in a row that make it pass.
    pub success_threshold: u32,
    /// Failures in a row that make it fail.
    pub failure_threshold: u32,
}

/// The container's probes, checked as the API server checks them.
pub fn probes_of(container: &Container) -> Result<Vec<Probe>, String> {
    let given = [
        (Kind::Startup, "startupProbe", &container.startup_probe),
        (Kind::Liveness, "livenessProbe", &container.liveness_probe),
        (
            Kind::Readiness,
            "readinessProbe",
            &container.readiness_probe,
        ),
    ];
    let mut probes = Vec::new();
    for (kind, field, spec) in given {
        let Some(spec) = spec else { continue };
        probes.push(probe(container, kind, spec).map_err(|error| format!("{field}: {error}"))?);
    }
    Ok(probes)
}

fn probe(container: &Container, kind: Kind, spec: &ProbeSpec) -> Result<Probe, String> {
    let positive = |value: Option<i32>, default: i32, field: &str, least: i32| {
        let value = value.unwrap_or(default);
        if value < least {
            Err(format!("{field} {value} must be at least {least}"))
        } else {
            Ok(value as u64)
        }
    };
    let success_threshold = positive(spec.success_threshold, 1, "successThreshold", 1)? as u32;
    if kind != Kind::Readiness && success_threshold != 1 {
        return Err("successThreshold must be 1 for liveness and startup probes".into());
    }
    const CHOICES: &str = "exec, httpGet, tcpSocket and grpc";
    let check = match &spec.grpc {
        Some(grpc) => {
            if spec.exec.is_some() || spec.http_get.is_some() || spec.tcp_socket.is_some() {
                return Err(format!("needs exactly one of {CHOICES}"));
            }
            Check::Grpc {
                port: u16::try_from(grpc.port)
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| format!("grpc.port {} is not a port (1-65535)", grpc.port))?,
                service: grpc.service.clone().filter(|service| !service.is_empty()),
            }
        }
        None => check_of(
            container,
            spec.exec.as_ref(),
            spec.http_get.as_ref(),
            spec.tcp_socket.as_ref(),
            CHOICES,
        )?,
    };
    Ok(Probe {
        kind,
        check,
        initial_delay: positive(spec.initial_delay_seconds, 0, "initialDelaySeconds", 0)?,
        period: positive(spec.period_seconds, 10, "periodSeconds", 1)?,
        timeout: positive(spec.timeout_seconds, 1, "timeoutSeconds", 1)?,
        success_threshold,
        failure_threshold: positive(spec.failure_threshold, 3, "failureThreshold", 1)? as u32,
    })
}

/// The check an action names (a probe's or a hook's): exactly one of `exec`, `httpGet`
/// and `tcpSocket`, its port resolved among the container's. `choices` names every
/// handler the caller's field takes, for the error when it names none or several.
pub fn check_of(
    container: &Container,
    exec: Option<&ExecAction>,
    http: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
    choices: &str,
) -> Result<Check, String> {
    let port = |port: &IntOrString| -> Result<u16, String> {
        match port {
            IntOrString::Int(number) => u16::try_from(*number)
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| format!("port {number} is not a port (1-65535)")),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|port| port.name.as_deref() == Some(name.as_str()))
                .and_then(|port| u16::try_from(port.container_port).ok())
                .ok_or_else(|| format!("port {name:?} names none of the container's ports")),
        }
    };
    match (exec, http, tcp) {
        (Some(exec), None, None) => {
            let command = exec.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err("exec.command must not be empty".into());
            }
            Ok(Check::Exec(command))
        }
        (None, Some(http), None) => {
            let https = match http.scheme.as_deref() {
                None | Some("HTTP") => false,
                Some("HTTPS") => true,
                Some(other) => {
                    return Err(format!(
                        "httpGet.scheme {other:?} is not a scheme: use HTTP or HTTPS"
                    ))
                }
            };
            Ok(Check::Http {
                https,
                host: http.host.clone().filter(|host| !host.is_empty()),
                port: port(&http.port).map_err(|error| format!("httpGet.{error}"))?,
                path: http
                    .path
                    .clone()
                    .filter(|path| !path.is_empty())
                    .unwrap_or_else(|| "/".into()),
                headers: http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|header| (header.name.clone(), header.value.clone()))
                    .collect(),
            })
        }
        (None, None, Some(tcp)) => Ok(Check::Tcp {
            host: tcp.host.clone().filter(|host| !host.is_empty()),
            port: port(&tcp.port).map_err(|error| format!("tcpSocket.{error}"))?,
        }),
        _ => Err(format!("needs exactly one of {choices}")),
    }
}

/// What a result changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The startup probe passed: the other probes begin. `ready` says whether the
    /// container is now ready (it is when it has no readiness probe).
    Started {
        /// Ready at once.
        ready: bool,
    },
    /// The container became ready (true) or unready (false).
    Ready(bool),
    /// Kill the container and restart it as its policy says: the probe failed for good.
    Restart(Kind),
}

/// A running container's probes and where they stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSet {
    probes: Vec<(Probe, Tally)>,
    started: bool,
    ready: bool,
    /// When each probe is next due (seconds since the run started), by index.
    due: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    successes: u32,
    failures: u32,
}

impl ProbeSet {
    /// The probes of a run that just started.
    pub fn new(probes: Vec<Probe>) -> ProbeSet {
        let started = !probes.iter().any(|probe| probe.kind == Kind::Startup);
        let ready = !probes.iter().any(|probe| probe.kind == Kind::Readiness);
        let due = probes.iter().map(|probe| probe.initial_delay).collect();
        ProbeSet {
            probes: probes
                .into_iter()
                .map(|probe| (probe, Tally::default()))
                .collect(),
            started,
            ready,
            due,
        }
    }

    /// Its startup probe has passed (or it has none).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Its readiness probe passes (or it has none), once started.
    pub fn ready(&self) -> bool {
        self.started && self.ready
    }

    /// True when it has no probe at all.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// The probes due at `elapsed` seconds into the run, by index, and when to look
    /// again.
    pub fn due(&self, elapsed: u64) -> (Vec<usize>, Option<u64>) {
        let active: Vec<usize> = (0..self.probes.len())
            .filter(|index| (self.probes[*index].0.kind == Kind::Startup) != self.started)
            .collect();
        let now = active
            .iter()
            .copied()
            .filter(|index| self.due[*index] <= elapsed)
            .collect();
        let next = active
            .iter()
            .map(|index| self.due[*index])
            .filter(|at| *at > elapsed)
            .min();
        (now, next)
    }

    /// The probe at `index`, to run.
    pub fn probe(&self, index: usize) -> Option<&Probe> {
        self.probes.get(index).map(|(probe, _)| probe)
    }

    /// Records the result of probe `index`, run at `elapsed` seconds into the run.
    pub fn record(&mut self, index: usize, passed: bool, elapsed: u64) -> Option<Verdict> {
        let (probe, tally) = self.probes.get_mut(index)?;
        self.due[index] = elapsed.max(self.due[index]) + probe.period;
        if passed {
            tally.successes = tally.successes.saturating_add(1);
            tally.failures = 0;
        } else {
            tally.failures = tally.failures.saturating_add(1);
            tally.successes = 0;
        }
        match probe.kind {
            Kind::Startup if passed && !self.started => {
                self.started = true;
                // The others start now, after their own delays.
                for (other, (probe, _)) in self.probes.iter().enumerate() {
                    if probe.kind != Kind::Startup {
                        self.due[other] = elapsed + probe.initial_delay;
                    }
                }
                Some(Verdict::Started { ready: self.ready })
            }
            Kind::Startup | Kind::Liveness if tally.failures >= probe.failure_threshold => {
                Some(Verdict::Restart(probe.kind))
            }
            Kind::Readiness
                if passed && !self.ready && tally.successes >= probe.success_threshold =>
            {
                self.ready = true;
                Some(Verdict::Ready(true))
            }
            Kind::Readiness
                if !passed && self.ready && tally.failures >= probe.failure_threshold =>
            {
                self.ready = false;
                Some(Verdict::Ready(false))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn probes_take_kubernetes_defaults_and_named_ports() {
        let probes = probes_of(&container(serde_json::json!({
            "name": "web", "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2, "successThreshold": 2},
            "startupProbe": {"exec": {"command": ["cat", "/ready"]}, "failureThreshold": 30}
        })))
        .unwrap();
        assert_eq!(probes.len(), 3);
        assert_eq!(probes[0].kind, Kind::Startup);
        assert_eq!(probes[0].failure_threshold, 30);
        assert_eq!(
            probes[1],
            Probe {
                kind: Kind::Liveness,
                check: Check::Http {
                    https: false,
                    host: None,
                    port: 8080,
                    path: "/healthz".into(),
                    headers: vec![]
                },
                initial_delay: 0,
                period: 10,
                timeout: 1,
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        assert_eq!(probes[2].success_threshold, 2);
    }

    #[test]
    fn grpc_and_https_probes_are_read() {
        let probes = probes_of(&container(serde_json::json!({
            "name": "api", "image": "x",
            "livenessProbe": {"grpc": {"port": 9090, "service": "orders"}},
            "readinessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}
        })))
        .unwrap();
        assert_eq!(
            probes[0].check,
            Check::Grpc {
                port: 9090,
                service: Some("orders".into())
            }
        );
        assert!(matches!(
            probes[1].check,
            Check::Http {
                https: true,
                port: 8443,
                ..
            }
        ));
    }

    #[test]
    fn bad_probes_are_refused_naming_the_field() {
        let cases = [
            (
                serde_json::json!({"livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2}}),
                "livenessProbe: successThreshold must be 1",
            ),
            (
                serde_json::json!({"readinessProbe": {"httpGet": {"port": "web"}}}),
                "readinessProbe: httpGet.port \"web\" names none of the container's ports",
            ),
            (
                serde_json::json!({"livenessProbe": {"grpc": {"port": 0}}}),
                "livenessProbe: grpc.port 0 is not a port (1-65535)",
            ),
            (
                serde_json::json!({"livenessProbe": {"grpc": {"port": 9000}, "tcpSocket": {"port": 80}}}),
                "livenessProbe: needs exactly one of exec, httpGet, tcpSocket and grpc",
            ),
            (
                serde_json::json!({"startupProbe": {"periodSeconds": 5}}),
                "startupProbe: needs exactly one of exec, httpGet, tcpSocket and grpc",
            ),
            (
                serde_json::json!({"readinessProbe": {"httpGet": {"port": 80, "scheme": "FTP"}}}),
                "readinessProbe: httpGet.scheme \"FTP\" is not a scheme: use HTTP or HTTPS",
            ),
            (
                serde_json::json!({"livenessProbe": {"exec": {"command": []}}}),
                "livenessProbe: exec.command must not be empty",
            ),
            (
                serde_json::json!({"readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 0}}),
                "readinessProbe: periodSeconds 0 must be at least 1",
            ),
        ];
        for (probes, expected) in cases {
            let mut json = serde_json::json!({"name": "web", "image": "x"});
            for (key, value) in probes.as_object().unwrap() {
                json[key] = value.clone();
            }
            let error = probes_of(&container(json)).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    fn tcp(kind: Kind, period: u64, successes: u32, failures: u32, delay: u64) -> Probe {
        Probe {
            kind,
            check: Check::Tcp {
                host: None,
                port: 80,
            },
            initial_delay: delay,
            period,
            timeout: 1,
            success_threshold: successes,
            failure_threshold: failures,
        }
    }

    #[test]
    fn a_startup_probe_alone_makes_the_container_ready_when_it_passes() {
        let mut set = ProbeSet::new(vec![tcp(Kind::Startup, 1, 1, 3, 0)]);
        assert!(!set.started() && !set.ready());
        assert_eq!(
            set.record(0, true, 1),
            Some(Verdict::Started { ready: true })
        );
        assert!(set.ready());
    }

    #[test]
    fn startup_gates_the_others_and_failures_in_a_row_decide() {
        let mut set = ProbeSet::new(vec![
            tcp(Kind::Startup, 1, 1, 3, 0),
            tcp(Kind::Liveness, 5, 1, 2, 1),
            tcp(Kind::Readiness, 2, 2, 1, 0),
        ]);
        assert!(!set.started() && !set.ready());
        assert_eq!(set.due(0), (vec![0], None));
        assert_eq!(set.record(0, false, 0), None);
        assert_eq!(set.due(1), (vec![0], None));
        assert_eq!(
            set.record(0, true, 1),
            Some(Verdict::Started { ready: false }),
            "a readiness probe has yet to pass"
        );
        // Liveness waits its delay from now; readiness begins at once.
        assert_eq!(set.due(1), (vec![2], Some(2)));
        assert_eq!(set.record(2, true, 1), None, "two successes needed");
        assert!(!set.ready());
        assert_eq!(set.due(2), (vec![1], Some(3)));
        assert_eq!(set.record(1, false, 2), None);
        assert_eq!(set.record(2, true, 3), Some(Verdict::Ready(true)));
        assert!(set.ready());
        assert_eq!(set.record(2, false, 5), Some(Verdict::Ready(false)));
        assert_eq!(
            set.record(1, true, 7),
            None,
            "a success resets the failures"
        );
        assert_eq!(set.record(1, false, 12), None);
        assert_eq!(
            set.record(1, false, 17),
            Some(Verdict::Restart(Kind::Liveness))
        );
        // A startup probe that never passes restarts the container too.
        let mut set = ProbeSet::new(vec![tcp(Kind::Startup, 1, 1, 2, 0)]);
        assert_eq!(set.record(0, false, 0), None);
        assert_eq!(
            set.record(0, false, 1),
            Some(Verdict::Restart(Kind::Startup))
        );
        // No probes: started and ready at once.
        let set = ProbeSet::new(Vec::new());
        assert!(set.started() && set.ready() && set.is_empty());
    }
}
