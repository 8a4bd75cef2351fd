//! `keelson-supervise`: the decisions of supervision, as pure types.
//!
//! * [`backoff`]: the exponential restart delay shared by PID 1, the DHCP client, the
//!   update engine's lock retries and the kubelet;
//! * [`agent`]: PID 1's supervisor of `keelsond` (start, restart with backoff, watchdog,
//!   stop), an event-in, actions-out machine;
//! * [`trial`]: whether a slot booted on trial has failed (deadline passed, or the agent
//!   keeps crashing).
//!
//! Nothing here reads a clock or touches a process: time is an argument, so every path is
//! tested on the host and proved in `kani/`.

pub mod agent;
pub mod backoff;
pub mod trial;
