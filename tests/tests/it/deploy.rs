//! deploy/: the DaemonSet manifest validates offline against pinned Kubernetes schemas
//! (kubernetes-validate), says only what the binary accepts and grants no more than it
//! should, and the image `cargo xtask image` builds runs under podman+runc with the
//! manifest's own args, capabilities, seccomp profile and mounts: it names a pod from
//! inside the container, serves /metrics and /healthz to the host, writes its dumps to
//! the mounted directory, stops cleanly on SIGTERM, and leaves no container, program,
//! mount or network namespace behind. Under CI a missing tool fails these tests.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    free_port, http_get, our_bpf_programs, require, require_root, stalltrace_bin, wait_until,
    PodCgroup,
};
use serde::Deserialize as _;
use serde_yaml::Value;
use stalltrace::lab::child::ChildGuard;
use stalltrace_testkit::scratch::Scratch;

/// Kubernetes versions the manifest must validate against: the first with
/// `recursiveReadOnly` mounts, and the newest the pinned kubernetes-validate
/// (deploy/requirements-validate.txt) ships schemas for.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Capabilities the DaemonSet may add: what `stalltrace watch` needs (docs/deploy.md).
const ALLOWED_CAPS: [&str; 2] = ["BPF", "PERFMON"];

const NS: &str = "shop";
/// A pod of the Deployment `WORKLOAD`: `<name>-<pod-template-hash>-<suffix>`.
const POD: &str = "cart-5d8f7b9c4-q7w2z";
const WORKLOAD: &str = "cart";
const WORKLOAD_KIND: &str = "Deployment";
const CONTAINER: &str = "pricer";
const UID: &str = "9a1c2e3f-4b5d-4e6f-8a7b-0c1d2e3f4a5b";
/// A containerd container id: 64 hex digits.
const CID: &str = "7e1f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifest() -> PathBuf {
    workspace().join("deploy/daemonset.yaml")
}

fn network_policy() -> PathBuf {
    workspace().join("deploy/networkpolicy.yaml")
}

/// Every document of a manifest file.
fn documents_of(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// Every document of the DaemonSet's manifest.
fn documents() -> Vec<Value> {
    documents_of(&manifest())
}

/// The container's environment variables taken from the downward API's
/// `status.podIP`.
fn pod_ip_vars(c: &Value) -> Vec<String> {
    c["env"]
        .as_sequence()
        .map(|env| {
            env.iter()
                .filter(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP")
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The arguments as the kubelet passes them: `$(VAR)` replaced from `vars`.
fn expand(args: &[String], vars: &[(String, String)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            vars.iter()
                .fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
        })
        .collect()
}

/// The port of a `--listen` value: `ADDR:PORT`, `[V6]:PORT`, or an address alone,
/// which the binary's help says takes port 9910.
fn listen_port(listen: &str) -> u64 {
    if let Ok(a) = listen.parse::<std::net::SocketAddr>() {
        return u64::from(a.port());
    }
    assert!(
        listen.parse::<std::net::IpAddr>().is_ok(),
        "--listen {listen}: not an address"
    );
    9910
}

fn daemonset(docs: &[Value]) -> &Value {
    let ds: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "DaemonSet").collect();
    assert_eq!(ds.len(), 1, "one DaemonSet in {}", manifest().display());
    ds[0]
}

fn container(ds: &Value) -> &Value {
    let cs = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert_eq!(cs.len(), 1, "one container");
    &cs[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().unwrap_or_else(|| panic!("{x:?}")).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `--flag` in an argument list (`--flag VALUE` or `--flag=VALUE`).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(name).and_then(|r| r.strip_prefix('='))
        }
    })
}

/// The binary's version, as `stalltrace --version` prints it.
fn version() -> String {
    let out = Command::new(stalltrace_bin())
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// Where scripts/setup.sh puts kubernetes-validate ($KUBERNETES_VALIDATE overrides).
fn kubernetes_validate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KUBERNETES_VALIDATE") {
        return Some(PathBuf::from(p));
    }
    let reqs = std::fs::read_to_string(workspace().join("deploy/requirements-validate.txt"))
        .unwrap_or_default();
    let v = reqs
        .lines()
        .find_map(|l| l.strip_prefix("kubernetes-validate=="))?
        .trim()
        .to_string();
    let tools = std::env::var_os("STALLTRACE_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("stalltrace")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/stalltrace")))?;
    let p = tools
        .join(format!("kubernetes-validate-{v}"))
        .join("bin/kubernetes-validate");
    p.exists().then_some(p)
}

/// Runs `cmd` with stdout/stderr to files, killed after `limit`: (status, out, err).
fn bounded(cmd: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    let dir = Scratch::new("deploy-cmd").unwrap();
    let (o, e) = (dir.join("out"), dir.join("err"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("spawning {cmd:?}: {err}"));
    let mut g = ChildGuard::new(child);
    g.grace = Duration::from_secs(2);
    let st = g
        .wait_for(limit)
        .unwrap_or_else(|| panic!("{cmd:?} still running after {limit:?}"));
    (
        st,
        std::fs::read_to_string(o).unwrap_or_default(),
        std::fs::read_to_string(e).unwrap_or_default(),
    )
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn deploy_manifest_validates_offline() {
    let name = "deploy_manifest_validates_offline";
    let kv = kubernetes_validate();
    if !require(
        name,
        kv.is_some(),
        "kubernetes-validate is missing (scripts/setup.sh installs it)",
    ) {
        return;
    }
    let kv = kv.unwrap();
    for file in [manifest(), network_policy()] {
        for k in KUBERNETES_VERSIONS {
            let (st, out, err) = bounded(
                Command::new(&kv)
                    .args(["--strict", "--kubernetes-version", k])
                    .arg(&file),
                Duration::from_secs(120),
            );
            assert!(
                st.success(),
                "{} on Kubernetes {k}:\n{out}\n{err}",
                file.display()
            );
            // One pass line per resource: nothing was skipped as unknown.
            let passed = format!("{out}{err}")
                .matches(" passed for resource ")
                .count();
            assert_eq!(passed, documents_of(&file).len(), "{out}\n{err}");
        }
    }
    // The validator is not a rubber stamp: a misspelt field fails in strict mode.
    let dir = Scratch::new("deploy-validate").unwrap();
    let bad = dir.join("bad.yaml");
    let text = std::fs::read_to_string(manifest()).unwrap();
    assert!(text.contains("hostPID: true"));
    std::fs::write(&bad, text.replace("hostPID: true", "hostPid: true")).unwrap();
    let (st, out, err) = bounded(
        Command::new(&kv)
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSIONS[0]])
            .arg(&bad),
        Duration::from_secs(120),
    );
    assert!(!st.success(), "a misspelt field passed:\n{out}\n{err}");
    assert!(format!("{out}{err}").contains("hostPid"), "{out}\n{err}");
}

#[test]
fn deploy_manifest_says_what_the_binary_accepts_and_grants_little() {
    let docs = documents();
    let ds = daemonset(&docs);
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(ds);
    let args = strings(&c["args"]);
    assert_eq!(args.first().map(String::as_str), Some("watch"), "{args:?}");

    // The image is what `cargo xtask image` tags for this binary.
    assert_eq!(
        c["image"].as_str(),
        Some(format!("localhost/stalltrace:{}", version()).as_str())
    );
    // Every flag is one `stalltrace watch --help` lists ...
    let help = Command::new(stalltrace_bin())
        .args(["watch", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let f = a.split('=').next().unwrap();
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(f)
                && l.trim_start()[f.len()..]
                    .chars()
                    .next()
                    .is_none_or(|ch| ch == ' ' || ch == ',')),
            "{f} is not a flag of stalltrace watch:\n{help}"
        );
    }
    // ... and the whole argument list parses, values included (clap checks every
    // argument before it acts on the trailing --help), with the pod IP the kubelet
    // puts in $(POD_IP) for an IPv4 pod and for an IPv6 pod.
    let ip_vars = pod_ip_vars(c);
    assert_eq!(
        ip_vars.len(),
        1,
        "one variable from status.podIP: {ip_vars:?}"
    );
    for pod_ip in ["10.244.3.17", "fd00:10:244:3::17"] {
        let vars = [(ip_vars[0].clone(), pod_ip.to_string())];
        let parsed = Command::new(stalltrace_bin())
            .args(expand(&args, &vars))
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            parsed.status.success(),
            "{args:?} with {pod_ip}: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    }
    assert!(
        help.contains("an address alone (port 9910"),
        "the help says what port an address alone takes:\n{help}"
    );

    // Privileges: host PID namespace, no host network, no privileged anywhere, only the
    // capabilities the agent needs, everything else dropped, root only in its container.
    assert_eq!(pod["hostPID"], Value::Bool(true));
    assert_ne!(pod["hostNetwork"], Value::Bool(true));
    assert_ne!(pod["hostIPC"], Value::Bool(true));
    assert!(
        !serde_yaml::to_string(ds)
            .unwrap()
            .lines()
            .any(|l| l.trim() == "privileged: true"),
        "privileged: true in the DaemonSet"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], Value::Bool(false));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    let add: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    let allowed: BTreeSet<String> = ALLOWED_CAPS.iter().map(|s| s.to_string()).collect();
    assert_eq!(add, allowed, "capabilities added");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(pod["automountServiceAccountToken"], Value::Bool(false));

    // Mounts: every hostPath read-only except the dump directory, which is the one
    // --dump-dir names; the paths the binary reads are mounted where it reads them.
    let dump_dir = flag(&args, "--dump-dir").expect("--dump-dir");
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mut host_paths = BTreeSet::new();
    for m in mounts {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume for {m:?}"));
        let Some(hp) = v["hostPath"]["path"].as_str() else {
            continue;
        };
        host_paths.insert(hp.to_string());
        let path = m["mountPath"].as_str().unwrap();
        if path == dump_dir {
            assert_ne!(m["readOnly"], Value::Bool(true), "dumps are written");
        } else {
            assert_eq!(m["readOnly"], Value::Bool(true), "{path} must be read-only");
            // Sub-mounts too (the cgroup v1 controllers under /sys/fs/cgroup).
            assert!(
                ["IfPossible", "Enabled"].contains(&m["recursiveReadOnly"].as_str().unwrap_or("")),
                "{path}: recursiveReadOnly"
            );
            assert_eq!(path, hp, "{hp} is mounted where the binary looks for it");
        }
    }
    for p in [
        "/sys/kernel/btf",
        "/sys/fs/cgroup",
        "/var/log/pods",
        "/var/log/containers",
    ] {
        assert!(host_paths.contains(p), "{p} is not mounted");
    }
    assert_eq!(flag(&args, "--pods-dir"), Some("/var/log/pods"));
    assert_eq!(flag(&args, "--containers-dir"), Some("/var/log/containers"));

    // The metrics port: --listen, the container port, the scrape annotation and the
    // probes all name the same one.
    // The pod IP only, not every interface of the pod.
    let listen = flag(&args, "--listen").expect("--listen");
    assert_eq!(
        listen,
        format!("$({})", ip_vars[0]),
        "listens on the pod IP from the downward API"
    );
    let port = listen_port(
        &expand(
            &[listen.to_string()],
            &[(ip_vars[0].clone(), "fd00::1".into())],
        )[0],
    );
    let ports = c["ports"].as_sequence().unwrap();
    let port_entry = ports
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(port))
        .expect("the listen port is a container port");
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"], "/healthz", "{probe}");
        assert!(
            g["port"] == port_entry["name"] || g["port"].as_u64() == Some(port),
            "{probe} port"
        );
    }

    // Runs everywhere, first to stay and last to go.
    assert!(pod["tolerations"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|t| t["operator"] == "Exists" && t["key"].is_null()));
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(!c["resources"][k][r].is_null(), "resources.{k}.{r}");
        }
    }
}

/// The NetworkPolicy selects the DaemonSet's pods in its namespace, admits only the
/// scraper (a namespace AND a pod selector in one peer) to the metrics port, and denies
/// all egress.
#[test]
fn deploy_network_policy_admits_only_the_scraper_to_the_metrics_port() {
    let docs = documents();
    let ds = daemonset(&docs);
    let c = container(ds);
    let pols = documents_of(&network_policy());
    assert_eq!(pols.len(), 1);
    let p = &pols[0];
    assert_eq!(p["kind"], "NetworkPolicy");
    assert_eq!(p["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    let sel = p["spec"]["podSelector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    assert!(!sel.is_empty());
    for (k, v) in sel {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the policy selects the agent's pods"
        );
    }
    let types = strings(&p["spec"]["policyTypes"]);
    assert_eq!(types, ["Ingress", "Egress"]);
    assert_eq!(
        p["spec"]["egress"].as_sequence().map(Vec::len),
        Some(0),
        "no egress"
    );
    let rules = p["spec"]["ingress"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1, "one ingress rule");
    let from = rules[0]["from"].as_sequence().unwrap();
    assert_eq!(from.len(), 1, "one peer: namespace AND pod selector");
    for key in ["namespaceSelector", "podSelector"] {
        let m = from[0][key]["matchLabels"].as_mapping();
        assert!(m.is_some_and(|m| !m.is_empty()), "{key} names the scraper");
    }
    let ports = rules[0]["ports"].as_sequence().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["protocol"], "TCP");
    let metrics = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert!(
        ports[0]["port"] == metrics["name"] || ports[0]["port"] == metrics["containerPort"],
        "the metrics port: {:?}",
        ports[0]
    );
}

/// The test's container and image: removed whatever happens.
struct Podman {
    name: String,
    tag: String,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = bounded(
            Command::new("podman").args(["rm", "-f", "-t", "5", &self.name]),
            Duration::from_secs(60),
        );
        let _ = bounded(
            Command::new("podman").args(["rmi", "-f", &self.tag]),
            Duration::from_secs(60),
        );
    }
}

fn podman(args: &[&str]) -> String {
    let (st, out, err) = bounded(Command::new("podman").args(args), Duration::from_secs(60));
    assert!(st.success(), "podman {args:?}: {err}");
    out.trim().to_string()
}

#[test]
fn deploy_image_serves_metrics_from_a_container() {
    let name = "deploy_image_serves_metrics_from_a_container";
    if !require_root(name) {
        return;
    }
    let tools = ["podman", "buildah", "runc"].map(|t| (t, tool(t)));
    if !require(
        name,
        tools.iter().all(|t| t.1),
        &format!("{tools:?}: scripts/setup.sh installs them"),
    ) {
        return;
    }
    assert!(
        Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists(),
        "this test plants its pod in the hybrid layout's unified hierarchy"
    );
    let t_all = Instant::now();
    let docs = documents();
    let ds = daemonset(&docs);
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(ds);
    let args = strings(&c["args"]);
    let sc = &c["securityContext"];

    // The image, as `cargo xtask image` builds it, from the binary under test, under a
    // tag of this test's own.
    let tag = format!("localhost/stalltrace-deploy-test:{}", std::process::id());
    let cname = format!("stalltrace-deploy-test-{}", std::process::id());
    let guard = Podman {
        name: cname.clone(),
        tag: tag.clone(),
    };
    let t0 = Instant::now();
    let (st, out, err) = bounded(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--",
                "image",
                "--binary",
            ])
            .arg(stalltrace_bin())
            .args(["--tag", &tag])
            .current_dir(workspace()),
        Duration::from_secs(900),
    );
    assert!(st.success(), "cargo xtask image:\n{out}\n{err}");
    assert_eq!(out.trim(), tag);
    eprintln!("image built in {:?}", t0.elapsed());
    assert_eq!(
        podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.Entrypoint}}",
            &tag
        ]),
        "[/stalltrace]"
    );

    // The DaemonSet's pod, as podman flags: its args, user, capabilities, seccomp
    // profile, read-only root, host PID namespace and mounts (the kubelet's log layout
    // and the dump directory made by the test, the kernel's as they are).
    let dir = Scratch::new("deploy").unwrap();
    let pods = dir.join("pods");
    std::fs::create_dir_all(pods.join(format!("{NS}_{POD}_{UID}")).join(CONTAINER)).unwrap();
    let containers = dir.join("containers");
    std::fs::create_dir_all(&containers).unwrap();
    std::fs::write(
        containers.join(format!("{POD}_{NS}_{CONTAINER}-{CID}.log")),
        b"",
    )
    .unwrap();
    let dumps = dir.join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let dump_dir = flag(&args, "--dump-dir").unwrap().to_string();
    let listen_port = listen_port(
        &expand(
            &[flag(&args, "--listen").unwrap().to_string()],
            &pod_ip_vars(c)
                .into_iter()
                .map(|v| (v, "10.88.0.2".to_string()))
                .collect::<Vec<_>>(),
        )[0],
    )
    .to_string();
    let port = free_port();

    let mut run: Vec<String> = ["--runtime", "runc", "run", "--detach", "--name", &cname]
        .map(String::from)
        .to_vec();
    if pod["hostPID"] == Value::Bool(true) {
        run.push("--pid=host".into());
    }
    run.push(format!(
        "--user={}:{}",
        sc["runAsUser"].as_u64().unwrap(),
        sc["runAsGroup"].as_u64().unwrap()
    ));
    for d in strings(&sc["capabilities"]["drop"]) {
        run.push(format!("--cap-drop={d}"));
    }
    for a in strings(&sc["capabilities"]["add"]) {
        run.push(format!("--cap-add={a}"));
    }
    match sc["seccompProfile"]["type"].as_str() {
        Some("Unconfined") => run.push("--security-opt=seccomp=unconfined".into()),
        Some("RuntimeDefault") | None => {}
        Some(other) => panic!("seccomp profile {other}: teach this test to run it"),
    }
    if sc["allowPrivilegeEscalation"] == Value::Bool(false) {
        run.push("--security-opt=no-new-privileges".into());
    }
    if sc["readOnlyRootFilesystem"] == Value::Bool(true) {
        run.push("--read-only".into());
    }
    assert_ne!(sc["privileged"], Value::Bool(true));
    // Without explicit limits below the machine's, runc's setrlimit fails here (no
    // CAP_SYS_RESOURCE, ENVIRONMENT.md); a kubelet passes the runtime's defaults.
    run.extend(["--ulimit=nofile=8192:8192", "--ulimit=nproc=8192:8192"].map(String::from));
    if let Some(m) = c["resources"]["limits"]["memory"].as_str() {
        let bytes = m
            .strip_suffix("Gi")
            .map(|g| g.parse::<u64>().unwrap() << 30)
            .or_else(|| {
                m.strip_suffix("Mi")
                    .map(|g| g.parse::<u64>().unwrap() << 20)
            })
            .unwrap_or_else(|| panic!("memory limit {m}: teach this test the unit"));
        run.push(format!("--memory={bytes}b"));
    }
    let volumes = pod["volumes"].as_sequence().unwrap();
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        let host = v["hostPath"]["path"]
            .as_str()
            .expect("hostPath volumes only");
        let path = m["mountPath"].as_str().unwrap();
        let host = match path {
            "/var/log/pods" => pods.to_string_lossy().into_owned(),
            "/var/log/containers" => containers.to_string_lossy().into_owned(),
            p if p == dump_dir => dumps.to_string_lossy().into_owned(),
            _ => host.to_string(),
        };
        let ro = if m["readOnly"] == Value::Bool(true) {
            ":ro"
        } else {
            ""
        };
        run.push(format!("--volume={host}:{path}{ro}"));
    }
    // The pod IP: an address of podman's default network, given to the container and
    // put where the downward API would (the env variable and $(VAR) in args).
    let pod_ip = format!(
        "10.88.{}.{}",
        200 + std::process::id() % 50,
        2 + std::process::id() % 250
    );
    run.push(format!("--ip={pod_ip}"));
    let vars: Vec<(String, String)> = pod_ip_vars(c)
        .into_iter()
        .map(|v| (v, pod_ip.clone()))
        .collect();
    assert!(!vars.is_empty(), "the manifest passes the pod IP");
    for (k, v) in &vars {
        run.push(format!("--env={k}={v}"));
    }
    run.push(format!("--publish=127.0.0.1:{port}:{listen_port}"));
    run.push(tag.clone());
    run.extend(expand(&args, &vars));
    let netns_before = std::fs::read_dir("/run/netns")
        .map(|d| d.count())
        .unwrap_or(0);
    let t_run = Instant::now();
    let run_refs: Vec<&str> = run.iter().map(String::as_str).collect();
    let id = podman(&run_refs);
    let merged = podman(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.MergedDir}}",
        &id,
    ]);
    let sandbox = podman(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
        &id,
    ]);
    let logs = || {
        bounded(
            Command::new("podman").args(["logs", &cname]),
            Duration::from_secs(30),
        )
        .2
    };
    let t_healthy = Instant::now();
    let mut healthy = false;
    while t_healthy.elapsed() < Duration::from_secs(60) && !healthy {
        healthy =
            http_get(port, "/healthz").is_some_and(|(code, body)| code == 200 && body == "ok\n");
        if !healthy {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        healthy,
        "healthz from the container within 60 s:\n{}",
        logs()
    );
    eprintln!("healthy {:?} after podman run", t_run.elapsed());

    // A stall by a culprit in a kubelet-shaped cgroup, named from inside the container.
    let cg = PodCgroup::make("besteffort", UID, CID);
    let lab = bounded(
        Command::new(stalltrace_bin())
            .args([
                "lab",
                "--scenario",
                "rt-hog",
                "--duration",
                "3s",
                "--cgroup",
            ])
            .arg(&cg.0)
            .arg("-o")
            .arg(dir.join("lab.jsonl")),
        Duration::from_secs(120),
    );
    assert!(lab.0.success(), "lab:\n{}\n{}", lab.1, lab.2);
    let series = format!(
        "stalltrace_stall_episodes_total{{culprit_namespace=\"{NS}\",culprit_workload=\"{WORKLOAD}\",culprit_workload_kind=\"{WORKLOAD_KIND}\",culprit_pod=\"{POD}\",culprit_container=\"{CONTAINER}\",culprit_comm=\"stall-hog\"}}"
    );
    let mut text = String::new();
    let t_ep = Instant::now();
    let mut named = false;
    while t_ep.elapsed() < Duration::from_secs(15) && !named {
        text = http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        named = text.lines().any(|l| l.starts_with(&series));
        if !named {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(named, "{series} in:\n{text}\n{}", logs());
    assert!(
        text.contains(&format!(
            "stalltrace_build_info{{version=\"{}\"}} 1",
            version()
        )),
        "{text}"
    );
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("stalltrace_process_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("agent RSS in the container: {:.1} MiB", rss / 1048576.0);

    // Its dumps land in the mounted directory, private, readable by the host's analyze.
    wait_until("an episode dump", Duration::from_secs(10), || {
        std::fs::read_dir(&dumps).is_ok_and(|d| {
            d.flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
        })
    });
    // Finished dumps only: one being written has a hidden temporary name.
    let first = std::fs::read_dir(&dumps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("stalltrace-episode-"))
        })
        .min()
        .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&first).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (st, rep, err) = bounded(
        Command::new(stalltrace_bin())
            .args(["analyze", "--format", "json"])
            .arg(&first),
        Duration::from_secs(60),
    );
    assert!(st.success(), "{err}");
    let rep: serde_json::Value = serde_json::from_str(&rep).unwrap();
    assert_eq!(rep["culprits"][0]["identity"]["pod"], POD, "{rep}");
    drop(cg);

    // SIGTERM (podman stop): exit 0 well before podman would resort to SIGKILL.
    let t_stop = Instant::now();
    podman(&["stop", "--time", "20", &cname]);
    let stop_took = t_stop.elapsed();
    assert_eq!(
        podman(&["inspect", "--format", "{{.State.ExitCode}}", &cname]),
        "0",
        "{}",
        logs()
    );
    assert!(
        stop_took < Duration::from_secs(10),
        "stopped in {stop_took:?}"
    );
    assert!(logs().contains("stopped (sigterm)"), "{}", logs());
    podman(&["rm", &cname]);

    // Nothing left: container, programs, mounts (its root, our directories), netns.
    assert_eq!(
        podman(&[
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("name={cname}")
        ]),
        ""
    );
    let left = our_bpf_programs();
    assert!(left.is_empty(), "programs left: {left:?}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for needle in [id.as_str(), merged.as_str(), &dir.path().to_string_lossy()] {
        assert!(
            !needle.is_empty() && !mountinfo.contains(needle),
            "mount left containing {needle}"
        );
    }
    if !sandbox.is_empty() {
        assert!(!Path::new(&sandbox).exists(), "netns {sandbox} left");
    }
    let netns_after = std::fs::read_dir("/run/netns")
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(netns_after <= netns_before, "a network namespace left");
    drop(guard);
    assert!(
        !bounded(
            Command::new("podman").args(["image", "exists", &tag]),
            Duration::from_secs(30)
        )
        .0
        .success(),
        "image {tag} left"
    );
    integration_tests::assert_machine_clean("after the deploy container");
    eprintln!("deploy container test: {:?} in all", t_all.elapsed());
}
