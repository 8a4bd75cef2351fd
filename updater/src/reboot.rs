//! When a node reboots into an installed update: at once, in its maintenance window, or
//! after the FleetLock server grants it a reboot slot.
//!
//! The FleetLock protocol (as Zincati speaks it to Airlock): before rebooting the node
//! POSTs `/v1/pre-reboot` and reboots only on `200`; once the new version is blessed it
//! POSTs `/v1/steady-state` to give the slot back. Both carry the `fleet-lock-protocol:
//! true` header and `{"client_params": {"id": …, "group": …}}`. A node reports steady
//! state on every boot that runs a blessed slot, so that a lock taken before a crash, a
//! cancel or a rollback is always returned.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keelson_config::model::{RebootPolicy, UpdatePolicy};
use keelson_linux::clock::unix_now;
use keelson_update::fleetlock::{FleetLock, LockAction, LockEvent};
use keelson_update::window::Window;
use tracing::{info, warn};

/// The gate a reboot waits at.
#[derive(Debug, Clone)]
pub enum RebootGate {
    /// Reboot as soon as the update is installed.
    Immediate,
    /// Reboot when the window opens.
    Window(Window),
    /// Reboot when the FleetLock server grants a slot.
    FleetLock(FleetLockClient),
}

impl RebootGate {
    /// The gate an update policy sets; `node_id` names the node to a FleetLock server. A
    /// policy that cannot be used (see [`RebootGate::problem`]) reboots at once rather
    /// than never, and says so in the log; `update status` shows the problem too.
    pub fn of(policy: Option<&UpdatePolicy>, node_id: &str) -> RebootGate {
        let (gate, problem) = RebootGate::resolve(policy, node_id);
        if let Some(problem) = problem {
            warn!("update: {problem}");
        }
        gate
    }

    /// The gate, and why the configured policy cannot be used as written when it cannot.
    /// Says nothing in the log (status calls it on every poll).
    pub fn resolve(policy: Option<&UpdatePolicy>, node_id: &str) -> (RebootGate, Option<String>) {
        let Some(policy) = policy else {
            return (RebootGate::Immediate, None);
        };
        let fallback = |why: String| {
            (
                RebootGate::Immediate,
                Some(format!(
                    "the reboot policy cannot be used ({why}); updates reboot at once instead; \
                     fix update.{} in the machine config",
                    match policy.effective_reboot_policy() {
                        RebootPolicy::Window => "window",
                        _ => "fleetLock",
                    }
                )),
            )
        };
        match policy.effective_reboot_policy() {
            RebootPolicy::Immediate => (RebootGate::Immediate, None),
            // The config was validated whole before it was put in force; a window that
            // still fails to build falls back to rebooting at once rather than never.
            RebootPolicy::Window => match policy.window.as_ref().map(|w| w.to_window()) {
                Some(Ok(window)) => (RebootGate::Window(window), None),
                Some(Err(error)) => fallback(format!("the window is invalid: {error}")),
                None => fallback("rebootPolicy is window but no window is given".to_owned()),
            },
            RebootPolicy::FleetLock => {
                match policy
                    .fleet_lock
                    .as_ref()
                    .and_then(|lock| Some((lock, lock.url.as_ref()?)))
                {
                    Some((lock, url)) => (
                        RebootGate::FleetLock(FleetLockClient::new(
                            url,
                            lock.group.as_deref().unwrap_or("default"),
                            node_id,
                        )),
                        None,
                    ),
                    None => fallback(
                        "rebootPolicy is fleet-lock but no fleetLock URL is given".to_owned(),
                    ),
                }
            }
        }
    }

    /// The policy's name, as status shows it.
    pub fn name(&self) -> &'static str {
        match self {
            RebootGate::Immediate => "immediate",
            RebootGate::Window(_) => "window",
            RebootGate::FleetLock(_) => "fleet-lock",
        }
    }
}

/// A FleetLock client.
#[derive(Debug, Clone)]
pub struct FleetLockClient {
    base: String,
    group: String,
    id: String,
}

impl FleetLockClient {
    /// A client of the server at `base` (`http://host:port`), for node `id` in `group`.
    pub fn new(base: &str, group: &str, id: &str) -> FleetLockClient {
        FleetLockClient {
            base: base.trim_end_matches('/').to_owned(),
            group: group.to_owned(),
            id: id.to_owned(),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The lock group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Asks for a reboot slot. Blocking.
    pub fn pre_reboot(&self) -> Result<(), String> {
        self.post("pre-reboot")
    }

    /// Gives the reboot slot back. Blocking.
    pub fn steady_state(&self) -> Result<(), String> {
        self.post("steady-state")
    }

    fn post(&self, operation: &str) -> Result<(), String> {
        let url = format!("{}/v1/{operation}", self.base);
        let body = serde_json::json!({
            "client_params": { "id": self.id, "group": self.group }
        })
        .to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .post(&url)
            .header("fleet-lock-protocol", "true")
            .content_type("application/json")
            .send(body.as_bytes())
            .map_err(|error| format!("POST {url} failed: {error}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // FleetLock servers explain a refusal as {"kind": …, "value": …}.
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| {
                let kind = value["kind"].as_str()?.to_owned();
                Some(match value["value"].as_str() {
                    Some(detail) => format!("{kind}: {detail}"),
                    None => kind,
                })
            })
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        Err(format!("{url} answered {status}: {reason}"))
    }
}

/// A reboot that waits at its gate. Status shows why; `cancel` stops it.
#[derive(Debug, Default)]
pub struct PendingReboot {
    state: Mutex<Option<(String, tokio::task::AbortHandle)>>,
}

impl PendingReboot {
    /// Why a reboot is waiting, if one is.
    pub fn reason(&self) -> Option<String> {
        self.state
            .lock()
            .ok()
            .and_then(|state| state.as_ref().map(|(reason, _)| reason.clone()))
    }

    fn set_reason(&self, reason: String) {
        if let Ok(mut state) = self.state.lock() {
            if let Some((current, _)) = state.as_mut() {
                *current = reason;
            }
        }
    }

    /// Stops a waiting reboot. Returns true when one was waiting.
    pub fn cancel(&self) -> bool {
        let taken = self.state.lock().ok().and_then(|mut state| state.take());
        match taken {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Reboots through `gate`: at once for `immediate` (returns `None`), otherwise starts a
    /// task that waits at the gate and returns why it waits. `still_wanted` is asked just
    /// before rebooting, so that an update cancelled meanwhile does not reboot the node.
    pub fn schedule(
        self: &Arc<Self>,
        gate: RebootGate,
        reboot: impl Fn() + Send + 'static,
        still_wanted: impl Fn() -> bool + Send + 'static,
    ) -> Option<String> {
        if let RebootGate::Immediate = gate {
            reboot();
            return None;
        }
        self.cancel();
        let first = waiting_reason(&gate, None);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let granted = match &gate {
                RebootGate::Immediate => true,
                RebootGate::Window(window) => {
                    me.wait_for_window(&gate, window).await;
                    true
                }
                RebootGate::FleetLock(client) => {
                    let mut lock = FleetLock::new();
                    let waiting = |lock: &FleetLock| {
                        me.set_reason(waiting_reason(&gate, lock.last_error()));
                    };
                    let granted =
                        drive_fleet_lock(client, &mut lock, LockEvent::RebootWanted, waiting).await;
                    if granted && !still_wanted() {
                        info!("update: the reboot is no longer wanted; giving the FleetLock slot back");
                        drive_fleet_lock(
                            client,
                            &mut lock,
                            LockEvent::RebootNoLongerWanted,
                            |_| {},
                        )
                        .await;
                        return;
                    }
                    granted
                }
            };
            if granted && still_wanted() {
                if let Ok(mut state) = me.state.lock() {
                    *state = None;
                }
                reboot();
            }
        });
        if let Ok(mut state) = self.state.lock() {
            *state = Some((first.clone(), task.abort_handle()));
        }
        Some(first)
    }

    async fn wait_for_window(&self, gate: &RebootGate, window: &Window) {
        loop {
            let now = unix_now();
            if window.is_open(now) {
                info!("update: the maintenance window is open; rebooting");
                return;
            }
            self.set_reason(waiting_reason(gate, None));
            let wait = (window.next_open(now) - now).clamp(1, 60);
            tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        }
    }
}

/// Runs the FleetLock machine from `event`: sends the requests it asks for and sleeps the
/// delays it sets (calling `waiting` before each), until it asks for a reboot (true) or has
/// nothing left to do (false).
async fn drive_fleet_lock(
    client: &FleetLockClient,
    lock: &mut FleetLock,
    event: LockEvent,
    waiting: impl Fn(&FleetLock),
) -> bool {
    let mut actions = lock.step(event);
    while let Some(action) = actions.pop() {
        let event = match action {
            LockAction::Reboot => {
                info!(
                    url = client.url(),
                    "update: FleetLock granted a reboot slot"
                );
                return true;
            }
            LockAction::RequestSlot => match blocking(client, FleetLockClient::pre_reboot).await {
                Ok(()) => LockEvent::Granted,
                Err(error) => {
                    warn!("update: no reboot slot yet: {error}");
                    LockEvent::Refused(error)
                }
            },
            LockAction::ReleaseSlot => {
                match blocking(client, FleetLockClient::steady_state).await {
                    Ok(()) => {
                        info!(
                            url = client.url(),
                            "update: reported steady state to FleetLock"
                        );
                        LockEvent::Released
                    }
                    Err(error) => {
                        warn!("update: cannot report steady state yet: {error}");
                        LockEvent::ReleaseFailed(error)
                    }
                }
            }
            LockAction::RetryAfter(delay) => {
                waiting(lock);
                tokio::time::sleep(delay).await;
                LockEvent::RetryDue
            }
        };
        actions = lock.step(event);
    }
    false
}

/// Runs one blocking FleetLock request off the async threads.
async fn blocking(
    client: &FleetLockClient,
    request: fn(&FleetLockClient) -> Result<(), String>,
) -> Result<(), String> {
    let client = client.clone();
    tokio::task::spawn_blocking(move || request(&client))
        .await
        .unwrap_or_else(|error| Err(error.to_string()))
}

fn waiting_reason(gate: &RebootGate, last_error: Option<&str>) -> String {
    match gate {
        RebootGate::Immediate => String::new(),
        RebootGate::Window(window) => format!(
            "waiting for the maintenance window ({}); it opens at {}",
            window.describe(),
            keelson_update::channel::format_time(window.next_open(unix_now()))
        ),
        RebootGate::FleetLock(client) => format!(
            "waiting for a reboot slot from FleetLock {} (group {}){}",
            client.url(),
            client.group(),
            last_error
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        ),
    }
}

/// Gives the FleetLock slot back once the node runs a blessed slot, retrying until the
/// server takes it.
pub async fn report_steady_state(client: FleetLockClient) {
    drive_fleet_lock(
        &client,
        &mut FleetLock::new(),
        LockEvent::SteadyState,
        |_| {},
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_reboot_policy_says_why_instead_of_falling_back_silently() {
        let policy = UpdatePolicy {
            reboot_policy: Some(RebootPolicy::FleetLock),
            ..UpdatePolicy::default()
        };
        let (gate, problem) = RebootGate::resolve(Some(&policy), "node-1");
        assert_eq!(gate.name(), "immediate");
        assert_eq!(
            problem.as_deref(),
            Some(
                "the reboot policy cannot be used (rebootPolicy is fleet-lock but no fleetLock \
                 URL is given); updates reboot at once instead; fix update.fleetLock in the \
                 machine config"
            )
        );
        assert_eq!(RebootGate::resolve(None, "node-1").1, None);
    }
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A FleetLock server with one slot, enough to see what the client sends.
    fn serve(
        requests: usize,
        holder: Option<&str>,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut holder = holder.map(str::to_owned);
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut length = 0;
                let mut protocol = false;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let lower = header.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    protocol |= lower.trim() == "fleet-lock-protocol: true";
                    if header.trim().is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let params: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let id = params["client_params"]["id"].as_str().unwrap().to_owned();
                let path = line.split_whitespace().nth(1).unwrap().to_owned();
                seen.push(format!(
                    "{path} {id} {} {protocol}",
                    params["client_params"]["group"]
                ));
                let granted = match path.as_str() {
                    "/v1/pre-reboot" if holder.as_deref().is_none_or(|h| h == id) => {
                        holder = Some(id);
                        true
                    }
                    "/v1/steady-state" => {
                        if holder.as_deref() == Some(&id) {
                            holder = None;
                        }
                        true
                    }
                    _ => false,
                };
                let (status, body) = if granted {
                    ("200 OK", String::new())
                } else {
                    (
                        "409 Conflict",
                        r#"{"kind":"failed_lock","value":"semaphore is full"}"#.to_owned(),
                    )
                };
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (url, handle)
    }

    #[test]
    fn the_client_speaks_fleetlock_and_reports_refusals() {
        let (url, server) = serve(4, Some("other-node"));
        let client = FleetLockClient::new(&format!("{url}/"), "workers", "node-1");
        let refused = client.pre_reboot().unwrap_err();
        assert!(refused.contains("409"), "{refused}");
        assert!(
            refused.contains("failed_lock: semaphore is full"),
            "{refused}"
        );
        FleetLockClient::new(&url, "workers", "other-node")
            .steady_state()
            .unwrap();
        client.pre_reboot().unwrap();
        client.steady_state().unwrap();
        assert_eq!(
            server.join().unwrap(),
            [
                "/v1/pre-reboot node-1 \"workers\" true",
                "/v1/steady-state other-node \"workers\" true",
                "/v1/pre-reboot node-1 \"workers\" true",
                "/v1/steady-state node-1 \"workers\" true",
            ]
        );
    }

    #[test]
    fn an_unreachable_server_is_named() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = FleetLockClient::new(&format!("http://127.0.0.1:{port}"), "g", "n")
            .pre_reboot()
            .unwrap_err();
        assert!(
            error.contains(&format!("127.0.0.1:{port}/v1/pre-reboot")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_reboot_waits_for_the_lock_and_a_cancel_stops_it() {
        let (url, server) = serve(1, Some("other-node"));
        let pending = Arc::new(PendingReboot::default());
        let rebooted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = rebooted.clone();
        let reason = pending
            .schedule(
                RebootGate::FleetLock(FleetLockClient::new(&url, "default", "node-1")),
                move || flag.store(true, std::sync::atomic::Ordering::SeqCst),
                || true,
            )
            .unwrap();
        assert!(
            reason.starts_with("waiting for a reboot slot from FleetLock"),
            "{reason}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reason = pending.reason().unwrap();
        assert!(reason.contains("semaphore is full"), "{reason}");
        assert!(pending.cancel());
        assert!(pending.reason().is_none());
        assert!(!rebooted.load(std::sync::atomic::Ordering::SeqCst));
        server.join().unwrap();
    }
}
