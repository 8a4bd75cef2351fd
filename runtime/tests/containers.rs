//! Real containers on the host, as root: container-init builds them from a busybox root
//! and the checks read what the container itself saw. This binary is its own
//! container-init (`containers container-init BUNDLE --report-fd N`), as keelsond is.
//!
//! The host's cgroup v1 controllers do not matter here: the container joins a cgroup of
//! the host's cgroup2 hierarchy without limits; limits are checked in the QEMU guest.

use std::io::Read;
use std::path::{Path, PathBuf};

use keelson_runtime::shell::launch::{Launcher, CONTAINER_EXEC, CONTAINER_INIT};
use keelson_runtime::shell::sandbox::{self, SandboxSpec};
use keelson_runtime::spec::{
    ContainerSpec, ExecSpec, NetworkMode, Process, Rlimit, RootSpec, SeccompProfile, VolumeKind,
    VolumeMount,
};

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.get(1).map(String::as_str) == Some(CONTAINER_EXEC) {
        std::process::exit(keelson_runtime::shell::exec::run(Path::new(&arguments[2])));
    }
    if arguments.get(1).map(String::as_str) == Some(CONTAINER_INIT) {
        let fd = arguments
            .get(4)
            .and_then(|fd| fd.parse().ok())
            .unwrap_or(-1);
        std::process::exit(keelson_runtime::shell::init::run(
            Path::new(&arguments[2]),
            fd,
        ));
    }
    type Test = (&'static str, fn(&Host));
    let tests: [Test; 8] = [
        (
            "volumes_are_bound_where_asked_and_no_symlink_leads_out_of_the_root",
            volumes,
        ),
        (
            "the_containers_of_a_pod_share_its_network_ipc_and_uts_namespaces",
            shared_sandbox,
        ),
        (
            "a_container_in_a_user_namespace_is_root_only_over_its_own_files",
            user_namespace,
        ),
        (
            "a_host_network_container_sees_the_nodes_links_and_hostname",
            host_network,
        ),
        (
            "a_process_executed_in_a_running_container_joins_its_namespaces",
            exec_joins_the_container,
        ),
        (
            "a_container_sees_only_its_own_root_devices_and_processes",
            sees_only_its_own_world,
        ),
        (
            "a_container_runs_with_the_default_privileges_and_its_exit_code_is_kept",
            default_privileges,
        ),
        (
            "a_program_missing_from_the_image_is_reported_and_nothing_runs",
            missing_program,
        ),
    ];
    let asked = Asked::parse(&arguments);
    if asked.list {
        // libtest's listing, which test runners (cargo nextest) read: none of these tests
        // is #[ignore]d, so the listing of ignored tests is empty.
        if !asked.ignored {
            for (name, _) in &tests {
                println!("{name}: test");
            }
        }
        return;
    }
    let Some(host) = Host::ready() else {
        return;
    };
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for (name, test) in tests {
        if !asked.selects(name) {
            filtered += 1;
            continue;
        }
        let outcome = std::panic::catch_unwind(|| test(&host));
        println!(
            "test {name} ... {}",
            if outcome.is_ok() { "ok" } else { "FAILED" }
        );
        passed += usize::from(outcome.is_ok());
        failed += usize::from(outcome.is_err());
    }
    host.clean_up();
    println!(
        "test result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    std::process::exit(i32::from(failed > 0));
}

/// What libtest's arguments ask of this harness: `cargo test -- NAME --test-threads 2` runs
/// the tests whose names hold NAME; `--exact NAME` runs that one test (nextest runs each test
/// so); `--list --format terse [--ignored]` lists them.
struct Asked<'a> {
    filter: Option<&'a str>,
    exact: bool,
    list: bool,
    ignored: bool,
}

impl<'a> Asked<'a> {
    fn parse(arguments: &'a [String]) -> Asked<'a> {
        let mut asked = Asked {
            filter: None,
            exact: false,
            list: false,
            ignored: false,
        };
        let mut words = arguments.iter().skip(1);
        while let Some(word) = words.next() {
            match word.as_str() {
                "--test-threads" | "--skip" | "--format" | "--color" | "--logfile" | "-Z" => {
                    words.next();
                }
                "--exact" => asked.exact = true,
                "--list" => asked.list = true,
                "--ignored" => asked.ignored = true,
                flag if flag.starts_with('-') => {}
                name => asked.filter = asked.filter.or(Some(name)),
            }
        }
        asked
    }

    fn selects(&self, name: &str) -> bool {
        match self.filter {
            None => true,
            Some(filter) if self.exact => name == filter,
            Some(filter) => name.contains(filter),
        }
    }
}

/// What the tests need of the host: root, busybox, overlayfs and a cgroup2 hierarchy.
struct Host {
    busybox: PathBuf,
    cgroup2: PathBuf,
}

impl Host {
    fn ready() -> Option<Host> {
        let test = "runtime::containers";
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            keelson_testkit::skip(test, "creating containers needs root");
            return None;
        }
        let busybox = PathBuf::from("/bin/busybox");
        if !busybox.exists() {
            keelson_testkit::skip(test, "needs /bin/busybox (Debian's busybox-static)");
            return None;
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let Some(cgroup2) = mounts
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
            })
            .next()
        else {
            keelson_testkit::skip(test, "the host has no cgroup2 hierarchy");
            return None;
        };
        // Orphaned containers come back to this process to be reaped, as they come to
        // PID 1 on a node.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        Some(Host { busybox, cgroup2 })
    }

    fn cgroup(&self) -> PathBuf {
        self.cgroup2
            .join(format!("keelson-test-{}", std::process::id()))
    }

    /// Removes the (empty) cgroups the tests made.
    fn clean_up(&self) {
        if let Ok(entries) = std::fs::read_dir(self.cgroup()) {
            for entry in entries.flatten().filter(|entry| entry.path().is_dir()) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        let _ = std::fs::remove_dir(self.cgroup());
    }

    /// A one-layer busybox image root.
    fn layer(&self, directory: &Path) -> PathBuf {
        let layer = directory.join("layer");
        for sub in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(layer.join(sub)).unwrap();
        }
        std::fs::copy(&self.busybox, layer.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "ls", "id", "hostname", "grep", "sleep", "mount", "ps", "touch",
            "stat", "readlink",
        ] {
            std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
        }
        std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        layer
    }

    fn spec(&self, directory: &Path, args: &[&str]) -> ContainerSpec {
        let leaf = self.cgroup().join(directory.file_name().unwrap());
        std::fs::create_dir_all(&leaf).unwrap();
        ContainerSpec {
            id: "test.app.0".into(),
            root: RootSpec {
                layers: vec![self.layer(directory)],
                upper: directory.join("upper"),
                work: directory.join("work"),
                mount_point: directory.join("rootfs"),
                read_only: false,
            },
            process: Process {
                args: args.iter().map(|arg| arg.to_string()).collect(),
                env: vec![
                    "PATH=/bin".into(),
                    "GREETING=hello from the container".into(),
                ],
                cwd: "/work/dir".into(),
                uid: 0,
                gid: 0,
                groups: vec![],
                // The sandbox a test host runs in may lack CAP_SYS_RESOURCE: stay under
                // its limit.
                rlimits: vec![Rlimit {
                    resource: libc::RLIMIT_NOFILE,
                    soft: 1024,
                    hard: 1024,
                }],
                capabilities: keelson_runtime::security::DEFAULT_CAPABILITIES
                    .iter()
                    .map(|name| name.to_string())
                    .collect(),
                no_new_privileges: true,
                seccomp: SeccompProfile::RuntimeDefault,
            },
            hostname: "web-1".into(),
            network: NetworkMode::Private,
            cgroup: leaf,
            user_namespace: None,
            shared: Default::default(),
            mounts: Vec::new(),
        }
    }

    /// Runs the container to its end; returns its output and exit status.
    fn run(&self, spec: &ContainerSpec, bundle: &Path) -> Result<(String, i32), String> {
        spec.write(bundle).unwrap();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut read = std::fs::File::from(read);
        let launcher = Launcher::new(std::env::current_exe().unwrap());
        let launched = launcher.launch(bundle, write.try_clone().unwrap(), write);
        let launched = launched?;
        let mut output = String::new();
        read.read_to_string(&mut output).unwrap();
        let status =
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launched.pid), None).unwrap();
        let code = match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("the container ended as {other:?}"),
        };
        Ok((output, code))
    }
}

fn sees_only_its_own_world(host: &Host) {
    let directory = tempfile::tempdir().unwrap();
    let script = format!(
        "echo pid=$$; echo host=$(hostname); echo cwd=$(pwd); echo $GREETING; \
         echo dev=$(ls /dev | tr '\\n' ' '); echo root=$(ls / | tr '\\n' ' '); \
         [ -e /proc/{host_pid} ] && echo the host process is visible; \
         for f in /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $f ] && echo masked $f=$(wc -c < $f); done; \
         echo loopback=$(cat /sys/class/net/lo/flags); ls /sys/class/net",
        host_pid = std::process::id()
    );
    let script = script.as_str();
    let spec = host.spec(directory.path(), &["sh", "-c", script]);
    let (output, code) = host.run(&spec, directory.path()).unwrap();
    assert_eq!(code, 0, "{output}");
    for expected in [
        "pid=1\n",
        "host=web-1\n",
        "cwd=/work/dir\n",
        "hello from the container\n",
        "dev=fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero\n",
        "loopback=0x9\n",
    ] {
        assert!(output.contains(expected), "{expected:?} not in:\n{output}");
    }
    let root_line = output
        .lines()
        .find(|line| line.starts_with("root="))
        .unwrap();
    // The image's root (bin etc tmp), the kernel filesystems, the working directory made
    // for it, and nothing of the node's.
    assert_eq!(root_line, "root=bin dev etc proc sys tmp work");
    assert!(!output.contains("visible"), "{output}");
    // Masked files read as /dev/null.
    let masked: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("masked "))
        .collect();
    assert!(
        !masked.is_empty() && masked.iter().all(|line| line.ends_with("=0")),
        "{output}"
    );
    // A network namespace of its own: loopback and nothing else.
    assert!(output.trim_end().ends_with("lo"), "{output}");
}

fn default_privileges(host: &Host) {
    let directory = tempfile::tempdir().unwrap();
    let script = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                  mount -t tmpfs none /tmp 2>&1 && echo mounted; exit 3";
    let spec = host.spec(directory.path(), &["sh", "-c", script]);
    let (output, code) = host.run(&spec, directory.path()).unwrap();
    assert_eq!(code, 3, "{output}");
    // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID
    // SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    assert!(output.contains("CapEff:\t00000000a80425fb"), "{output}");
    assert!(output.contains("CapBnd:\t00000000a80425fb"), "{output}");
    assert!(output.contains("NoNewPrivs:\t1"), "{output}");
    assert!(output.contains("Seccomp:\t2"), "{output}");
    assert!(
        !output.contains("mounted"),
        "a container mounted a filesystem:\n{output}"
    );
}

fn exec_joins_the_container(host: &Host) {
    let directory = tempfile::tempdir().unwrap();
    let spec = host.spec(
        directory.path(),
        &["sh", "-c", "echo started; exec sleep 30"],
    );
    spec.write(directory.path()).unwrap();
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let launcher = Launcher::new(std::env::current_exe().unwrap());
    let launched = launcher
        .launch(directory.path(), write.try_clone().unwrap(), write)
        .unwrap();
    let mut first_line = [0u8; 8];
    std::fs::File::from(read)
        .read_exact(&mut first_line)
        .unwrap();

    let exec = |args: &[&str]| {
        let exec_spec = ExecSpec {
            container: spec.id.clone(),
            pid: launched.pid,
            start_time: launched.start_time,
            cgroup: spec.cgroup.clone(),
            process: Process {
                args: args.iter().map(|arg| arg.to_string()).collect(),
                ..spec.process.clone()
            },
            terminal: false,
        };
        let file = directory.path().join("exec.json");
        std::fs::write(&file, serde_json::to_vec(&exec_spec).unwrap()).unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(CONTAINER_EXEC)
            .arg(&file)
            .output()
            .unwrap();
        assert!(!file.exists(), "the spec file is removed once read");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = exec(&[
        "sh",
        "-c",
        "echo $(hostname) $(pwd) $$; cat /proc/1/cmdline | tr '\\0' ' '; exit 7",
    ]);
    assert_eq!(code, Some(7));
    // Its hostname and working directory, a pid in its namespace after its first process.
    let mut lines = stdout.lines();
    let first = lines.next().unwrap();
    assert!(first.starts_with("web-1 /work/dir "), "{stdout}");
    assert_ne!(first, "web-1 /work/dir 1", "{stdout}");
    assert_eq!(lines.next().unwrap().trim_end(), "sleep 30");
    let (code, _, stderr) = exec(&["nginx"]);
    assert_eq!(code, Some(127));
    assert!(
        stderr.contains("executable file \"nginx\" not found"),
        "{stderr}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launched.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launched.pid), None).unwrap();
    let (code, _, stderr) = exec(&["true"]);
    assert_eq!(code, Some(126));
    assert!(
        stderr.contains("container test.app.0 is not running"),
        "{stderr}"
    );
}

fn user_namespace(host: &Host) {
    let directory = tempfile::tempdir().unwrap();
    let mut spec = host.spec(
        directory.path(),
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c '%u:%g' / /bin/busybox /dev/null; \
             touch /etc/made-here && echo wrote /etc; \
             mount -t tmpfs none /tmp 2>/dev/null || echo mount refused; \
             hostname elsewhere 2>/dev/null || echo hostname refused; \
             grep -E '^(CapEff|Seccomp):' /proc/self/status",
        ],
    );
    let mapping = keelson_runtime::spec::IdMapping {
        host_id: 7 * 65536,
        size: 65536,
    };
    spec.user_namespace = Some(mapping);
    let (output, code) = host.run(&spec, directory.path()).unwrap();
    assert_eq!(code, 0, "{output}");
    let lines: Vec<Vec<&str>> = output
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let expected: Vec<Vec<&str>> = [
        "0 458752 65536",
        "0 458752 65536",
        "0",
        // The root, the image's files (the node's root's on disk) and /dev: the container's
        // root's, through the idmapped layers.
        "0:0",
        "0:0",
        "0:0",
        "wrote /etc",
        "mount refused",
        "hostname refused",
        // The default capabilities, held in its own user namespace only.
        "CapEff: 00000000a80425fb",
        "Seccomp: 2",
    ]
    .iter()
    .map(|line| line.split_whitespace().collect())
    .collect();
    assert_eq!(lines, expected, "{output}");
    // On the node, what it wrote is owned by the node id of its root; the shared layer is
    // untouched.
    use std::os::unix::fs::MetadataExt;
    let written = std::fs::metadata(spec.root.upper.join("etc/made-here")).unwrap();
    assert_eq!((written.uid(), written.gid()), (458752, 458752));
    assert!(!spec.root.layers[0].join("etc/made-here").exists());
    let layer = std::fs::metadata(spec.root.layers[0].join("bin/busybox")).unwrap();
    assert_eq!(layer.uid(), 0);
}

fn host_network(host: &Host) {
    let directory = tempfile::tempdir().unwrap();
    let mut spec = host.spec(
        directory.path(),
        &[
            "sh",
            "-c",
            "hostname; echo $(ls /sys/class/net); ls /sys/fs/cgroup | grep -c procs",
        ],
    );
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    spec.hostname = node.clone();
    spec.network = NetworkMode::Host;
    let (output, code) = host.run(&spec, directory.path()).unwrap();
    assert_eq!(code, 0, "{output}");
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some(node.as_str()), "{output}");
    let mut node_links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    node_links.sort();
    let seen: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(seen, node_links, "{output}");
    // The container's own cgroup, not the node's hierarchy.
    assert_ne!(lines.next(), Some("0"), "{output}");
}

fn volumes(host: &Host) {
    let directory = tempfile::tempdir().unwrap();
    let node = directory.path().join("node");
    let scratch = directory.path().join("scratch");
    std::fs::create_dir_all(node.join("config")).unwrap();
    std::fs::write(node.join("config/app.conf"), "from the node\n").unwrap();
    std::fs::write(node.join("greeting"), "hello file\n").unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    // A volume that holds a symlink out of it, as a container of the pod could make.
    std::os::unix::fs::symlink("/", scratch.join("link")).unwrap();
    let bundle = directory.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let script = "cat /config/app.conf; (echo x > /config/new) 2>/dev/null || echo read-only; \
                  echo written > /scratch/out; echo deep > /sub/file; cat /etc/greeting; \
                  echo in-volume > /linked/file; echo via-image > /escape/marker; \
                  cat /escape/marker";
    let mut spec = host.spec(&bundle, &["sh", "-c", script]);
    // The image holds a symlink to the node's /etc: a mount path through it stays inside.
    std::os::unix::fs::symlink("/etc", spec.root.layers[0].join("escape")).unwrap();
    let volume =
        |source: &Path, sub_path: Option<&str>, destination: &str, read_only| VolumeMount {
            source: source.to_owned(),
            sub_path: sub_path.map(str::to_owned),
            destination: destination.into(),
            read_only,
            kind: VolumeKind::Pod,
        };
    spec.mounts = vec![
        volume(&node.join("config"), None, "/config", true),
        volume(&scratch, None, "/scratch", false),
        volume(&scratch, Some("made/deeper"), "/sub", false),
        volume(&node.join("greeting"), None, "/etc/greeting", true),
        volume(&scratch, Some("link/inside"), "/linked", false),
        volume(&scratch, Some("marker-dir"), "/escape/kept", false),
    ];
    let (output, code) = host.run(&spec, &bundle).unwrap();
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        output, "from the node\nread-only\nhello file\nvia-image\n",
        "what the container saw"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("out")).unwrap(),
        "written\n"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("made/deeper/file")).unwrap(),
        "deep\n"
    );
    // The subPath through the volume's symlink to / stayed in the volume.
    assert_eq!(
        std::fs::read_to_string(scratch.join("inside/file")).unwrap(),
        "in-volume\n"
    );
    assert!(!Path::new("/inside").exists());
    // The mount path through the image's symlink to /etc stayed in the container's root.
    assert!(!Path::new("/etc/kept").exists() && !Path::new("/etc/marker").exists());
    assert!(
        spec.root.upper.join("etc/kept").is_dir(),
        "made in the container's root"
    );
    assert!(!node.join("config/new").exists());
    // A mount path with '..' is refused, saying which.
    let bundle = directory.path().join("dots");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut spec = host.spec(&bundle, &["true"]);
    spec.mounts = vec![volume(&scratch, None, "/a/../../b", false)];
    let error = host.run(&spec, &bundle).unwrap_err();
    assert!(
        error.contains("mountPath \"/a/../../b\" must not contain '..'"),
        "{error}"
    );
}

fn shared_sandbox(host: &Host) {
    use std::os::unix::fs::MetadataExt;
    let directory = tempfile::tempdir().unwrap();
    let pinned_in = directory.path().join("sandbox");
    let sandbox = SandboxSpec {
        hostname: "pod-1".into(),
        own_network: true,
        open_to_unprivileged: false,
    };
    let shared = sandbox::create(&pinned_in, &sandbox).unwrap();
    assert!(sandbox::exists(&pinned_in, true));
    let inode = |path: &Option<PathBuf>| std::fs::metadata(path.as_ref().unwrap()).unwrap().ino();
    let expected = format!(
        "net:[{}] ipc:[{}] uts:[{}] pod-1 lo",
        inode(&shared.network),
        inode(&shared.ipc),
        inode(&shared.uts)
    );
    let script = "echo $(for n in net ipc uts; do readlink /proc/self/ns/$n; done) \
                  $(hostname) $(ls /sys/class/net)";
    // Two containers, one after the other: both in the pod's namespaces, which outlive
    // them; the hostname is the pod's, whatever the container's spec says.
    for container in ["first", "second"] {
        let bundle = directory.path().join(container);
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec = host.spec(&bundle, &["sh", "-c", script]);
        spec.hostname = "ignored".into();
        spec.shared = shared.clone();
        let (output, code) = host.run(&spec, &bundle).unwrap();
        assert_eq!(code, 0, "{output}");
        assert_eq!(output.trim(), expected, "container {container}");
    }
    assert_ne!(
        std::fs::read_link("/proc/self/ns/net")
            .unwrap()
            .to_string_lossy(),
        expected.split(' ').next().unwrap(),
        "the pod's network namespace is not the node's"
    );
    sandbox::remove(&pinned_in);
    assert!(!sandbox::exists(&pinned_in, true));
    assert!(!pinned_in.exists());
    // A container cannot join a sandbox that is gone, and says why.
    let bundle = directory.path().join("late");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut spec = host.spec(&bundle, &["true"]);
    spec.shared = shared;
    let error = host.run(&spec, &bundle).unwrap_err();
    assert!(
        error.contains("cannot open the pod's network namespace")
            && error.contains("its sandbox is gone"),
        "{error}"
    );
}

fn missing_program(host: &Host) {
    let directory = tempfile::tempdir().unwrap();
    let spec = host.spec(directory.path(), &["nginx", "-g", "daemon off;"]);
    let error = host.run(&spec, directory.path()).unwrap_err();
    assert!(
        error.contains("executable file \"nginx\" not found in $PATH (/bin)"),
        "{error}"
    );
}
