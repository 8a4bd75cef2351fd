//! The guest half of `cargo bench -p keelson-tests --bench runtime`: times container
//! creation inside a Keelson VM with Keelson's runtime, crun and runc, on the same root
//! filesystem, then becomes the node agent.
//!
//! The bench image carries this program as `/usr/bin/keelsond` (the real agent moved to
//! `/usr/bin/keelsond.real`), crun and runc with their libraries, a busybox root at
//! `/usr/share/keelson-bench/rootfs`, and an OCI bundle config for crun and runc. PID 1
//! starts this program as the agent: it measures, prints its figures on the console
//! (`keelson-bench: …` lines), and executes the real agent in its place.
//!
//! One run is the wall time from asking for a container whose process is `/bin/true` to
//! that process's exit having been collected: container-init's launch and the reap for
//! Keelson, `crun run` and `runc run` (which create, start and wait) for the others. The
//! runs interleave the three, so that a slow stretch of the VM falls on all of them.
//!
//! Then, for the pods bench, the time to have 1, 10 and 50 idle containers running,
//! created one after another by Keelson's runtime alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use keelson_runtime::shell::launch::Launcher;
use keelson_runtime::spec::{
    ContainerSpec, NetworkMode, Process, RootSpec, SeccompProfile, DEFAULT_RLIMITS,
};

const REAL_AGENT: &str = "/usr/bin/keelsond.real";
const ROOTFS: &str = "/usr/share/keelson-bench/rootfs";
const OCI_CONFIG: &str = "/usr/share/keelson-bench/config.json";
const WORK: &str = "/run/keelson-bench";
const RUNS: usize = 15;
/// The numbers of idle containers started together (the pods bench's batches).
const BATCHES: [usize; 3] = [1, 10, 50];

fn main() {
    if let Err(error) = bench() {
        say(&format!("failed: {error}"));
    }
    say("done");
    // Become the agent: same pid, same arguments, same environment.
    let error = exec_real_agent();
    say(&format!("cannot execute {REAL_AGENT}: {error}"));
    std::process::exit(1);
}

fn say(line: &str) {
    println!("keelson-bench: {line}");
}

fn exec_real_agent() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    Command::new(REAL_AGENT)
        .args(std::env::args_os().skip(1))
        .exec()
}

fn bench() -> Result<(), String> {
    // Containers are orphaned by design; they come back here to be reaped.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let work = Path::new(WORK);
    std::fs::create_dir_all(work.join("oci")).map_err(|error| error.to_string())?;
    std::fs::copy(OCI_CONFIG, work.join("oci/config.json"))
        .map_err(|error| format!("{OCI_CONFIG}: {error}"))?;
    let cgroup = Path::new("/sys/fs/cgroup/keelson-bench");
    std::fs::create_dir_all(cgroup).map_err(|error| error.to_string())?;
    let launcher = Launcher::new(REAL_AGENT);
    let mut figures: [(&str, Vec<f64>); 3] = [
        ("keelson", Vec::new()),
        ("crun", Vec::new()),
        ("runc", Vec::new()),
    ];
    for run in 0..RUNS + 1 {
        let keelson = time_keelson(&launcher, work, cgroup, run)?;
        let crun = time_oci("crun", work, run)?;
        let runc = time_oci("runc", work, run)?;
        // The first round warms the page cache for all three; it is not counted.
        if run > 0 {
            figures[0].1.push(keelson);
            figures[1].1.push(crun);
            figures[2].1.push(runc);
        }
    }
    for (name, runs) in &figures {
        let rendered: Vec<String> = runs.iter().map(|ms| format!("{ms:.1}")).collect();
        say(&format!(
            "{name} median {:.1} ms over {} runs ({})",
            median(runs),
            runs.len(),
            rendered.join(" ")
        ));
    }
    time_batches(&launcher, work, cgroup)?;
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn time_keelson(
    launcher: &Launcher,
    work: &Path,
    cgroup: &Path,
    run: usize,
) -> Result<f64, String> {
    let started = Instant::now();
    let container = create(launcher, work, cgroup, &format!("true-{run}"), "/bin/true")?;
    let status =
        nix::sys::wait::waitpid(container.pid, None).map_err(|errno| errno.desc().to_owned())?;
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    if status != nix::sys::wait::WaitStatus::Exited(container.pid, 0) {
        return Err(format!("keelson's container ended as {status:?}"));
    }
    let _ = std::fs::remove_dir(&container.cgroup);
    Ok(elapsed)
}

/// For each of [`BATCHES`]: the wall time from asking for the first of that many idle
/// containers (`sleep`) to the last one running, one after another as a node starting
/// that many pods would, with nothing of the kubelet's around them. The pods bench sets
/// the kubelet's apply-to-Ready time beside it.
fn time_batches(launcher: &Launcher, work: &Path, cgroup: &Path) -> Result<(), String> {
    for count in BATCHES {
        let started = Instant::now();
        let mut running = Vec::with_capacity(count);
        for index in 0..count {
            let name = format!("batch-{count}-{index}");
            running.push(create(launcher, work, cgroup, &name, "/bin/sleep")?);
        }
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        say(&format!(
            "keelson batch of {count} running in {elapsed:.1} ms"
        ));
        for container in running {
            let _ = nix::sys::signal::kill(container.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(container.pid, None);
            let _ = std::fs::remove_dir(&container.cgroup);
        }
    }
    Ok(())
}

/// A container of Keelson's runtime that runs.
struct Container {
    pid: nix::unistd::Pid,
    cgroup: PathBuf,
}

/// Writes the bundle of a container named `name` whose process is `program` (with 3600
/// as its argument when it is `sleep`) over the busybox root, and creates it.
fn create(
    launcher: &Launcher,
    work: &Path,
    cgroup: &Path,
    name: &str,
    program: &str,
) -> Result<Container, String> {
    let bundle = work.join(format!("keelson-{name}"));
    let leaf = cgroup.join(name);
    std::fs::create_dir_all(&bundle).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(&leaf).map_err(|error| error.to_string())?;
    let mut args = vec![program.to_owned()];
    if program.ends_with("sleep") {
        args.push("3600".into());
    }
    let spec = ContainerSpec {
        id: format!("bench.{name}"),
        root: RootSpec {
            layers: vec![PathBuf::from(ROOTFS)],
            upper: bundle.join("upper"),
            work: bundle.join("work"),
            mount_point: bundle.join("rootfs"),
            read_only: false,
        },
        process: Process {
            args,
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            rlimits: DEFAULT_RLIMITS.to_vec(),
            capabilities: keelson_runtime::security::DEFAULT_CAPABILITIES
                .iter()
                .map(|name| name.to_string())
                .collect(),
            no_new_privileges: true,
            seccomp: SeccompProfile::RuntimeDefault,
        },
        hostname: "bench".into(),
        network: NetworkMode::Private,
        cgroup: leaf.clone(),
        user_namespace: None,
        shared: Default::default(),
        mounts: Vec::new(),
    };
    spec.write(&bundle).map_err(|error| error.to_string())?;
    let null = || {
        std::fs::File::create("/dev/null")
            .map(std::os::fd::OwnedFd::from)
            .map_err(|error| error.to_string())
    };
    let launched = launcher.launch(&bundle, null()?, null()?)?;
    Ok(Container {
        pid: nix::unistd::Pid::from_raw(launched.pid),
        cgroup: leaf,
    })
}

fn time_oci(runtime: &str, work: &Path, run: usize) -> Result<f64, String> {
    let started = Instant::now();
    let output = Command::new(runtime)
        .args(["--root", &format!("{WORK}/{runtime}-state")])
        .args(["run", "--bundle"])
        .arg(work.join("oci"))
        .arg(format!("bench-{runtime}-{run}"))
        // PID 1's NOTIFY_SOCKET would have them pass a notify socket into the container.
        .env_clear()
        .env("PATH", "/usr/bin:/usr/sbin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|error| format!("cannot run {runtime}: {error}"))?;
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    if !output.status.success() {
        return Err(format!(
            "{runtime} run failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(elapsed)
}
