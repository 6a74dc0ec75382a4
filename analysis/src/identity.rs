//! Kubernetes identity without API access: which namespace, pod and container (or,
//! for host processes, which systemd unit) a cgroup path belongs to.
//!
//! The cgroup path alone gives the pod UID, the container id, the QoS class, the
//! runtime and the unit ([`parse_cgroup_path`]); the kubelet's log layout gives the
//! names ([`Names`], built from `/var/log/pods` and `/var/log/containers` entries that
//! the caller lists). Everything here is pure: the Linux crate does the reading.
use std::{borrow::Cow, collections::HashMap};

use serde::{Deserialize, Serialize};

/// Who a task is, in the words users think in. Every field is optional: a host
/// process has a unit and no pod, a container seen before its logs exist has ids
/// and no names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Identity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// With dashes, as the API shows it (`_` in systemd slice names turned back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The container's name in its pod spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// 64 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// `containerd`, `crio` or `docker`; none when the path does not say (the
    /// cgroupfs driver names a container by its bare id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The systemd unit of a host process (`kubelet.service`), escapes decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The cgroup path this was derived from, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl Identity {
    /// Escapes control characters in every field (see [`crate::report::escape`]).
    pub fn sanitize(&mut self) {
        for f in [
            &mut self.namespace,
            &mut self.pod,
            &mut self.pod_uid,
            &mut self.container,
            &mut self.container_id,
            &mut self.qos,
            &mut self.runtime,
            &mut self.unit,
            &mut self.cgroup,
        ] {
            if let Some(s) = f.as_mut() {
                crate::report::escape::field(s);
            }
        }
    }

    /// The words a report prints: `namespace/pod/container`, `namespace/pod`,
    /// `pod <uid>`, `unit kubelet.service` or `container <12 hex>`, most specific
    /// first; `None` when the path said nothing (the root cgroup).
    pub fn short(&self) -> Option<String> {
        if let (Some(ns), Some(pod)) = (&self.namespace, &self.pod) {
            return Some(match &self.container {
                Some(c) => format!("{ns}/{pod}/{c}"),
                None => format!("{ns}/{pod}"),
            });
        }
        if let Some(uid) = &self.pod_uid {
            return Some(format!("pod {uid}"));
        }
        if let Some(unit) = &self.unit {
            return Some(format!("unit {unit}"));
        }
        // chars(), not a byte slice: a deserialized identity may hold anything.
        let id = self.container_id.as_ref()?;
        Some(format!(
            "container {}",
            id.chars().take(SHORT_ID).collect::<String>()
        ))
    }
}

/// Hex digits of a container id in [`Identity::short`], as `docker ps` shows them.
const SHORT_ID: usize = 12;

/// The pod, container, QoS class, runtime and unit a cgroup path names.
///
/// Reads both kubelet cgroup drivers at any depth (a prefix such as kind's
/// `/kubelet.slice/` or a node container's own cgroup is skipped): systemd
/// (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
/// cri-containerd-<id>.scope`) and cgroupfs (`/kubepods/burstable/pod<uid>/<id>`).
/// The innermost pod and container win: a kind node is itself a container holding
/// pods. Never panics; what it cannot read stays `None`.
pub fn parse_cgroup_path(path: &str) -> Identity {
    let mut id = Identity {
        cgroup: (!path.is_empty()).then(|| path.to_string()),
        ..Identity::default()
    };
    // `..` appears when the task is outside the reader's cgroup namespace; the
    // levels below it still name what it is.
    let levels: Vec<Cow<'_, str>> = path
        .split('/')
        .filter(|l| !l.is_empty() && *l != "." && *l != "..")
        .map(unescape_systemd)
        .collect();
    let mut under_kubepods = false;
    let mut prev: &str = "";
    for level in &levels {
        let level: &str = level;
        if let Some(found) = colon_form(level) {
            // containerd's unconverted systemd form: `<pod slice>:<prefix>:<id>`.
            enter_pod(&mut id, found.pod);
            enter_container(&mut id, found.container);
        } else if let Some(pod) = pod_slice(level) {
            under_kubepods = true;
            enter_pod(&mut id, pod);
        } else if let Some(qos) = kubepods_slice(level) {
            under_kubepods = true;
            if let Some(q) = qos {
                id.qos = Some(q.to_string());
            }
        } else if level == "kubepods" {
            under_kubepods = true;
        } else if under_kubepods && prev == "kubepods" && qos_word(level).is_some() {
            id.qos = Some(level.to_string());
        } else if let Some(pod) = under_kubepods.then(|| cgroupfs_pod(level, prev)).flatten() {
            enter_pod(&mut id, pod);
        } else if let Some(found) = container_level(level, prev) {
            match found {
                Level::Container(c) => enter_container(&mut id, c),
                Level::Conmon => {
                    // CRI-O's monitor sits beside the container, not in it.
                    id.container_id = None;
                    id.runtime = Some(RUNTIME_CRIO.into());
                    id.unit = id.pod_uid.is_none().then(|| level.to_string());
                }
            }
        } else if is_unit(level) {
            id.unit = Some(level.to_string());
        }
        prev = level;
    }
    id
}

const RUNTIME_CONTAINERD: &str = "containerd";
const RUNTIME_CRIO: &str = "crio";
const RUNTIME_DOCKER: &str = "docker";

struct Pod {
    uid: String,
    qos: Option<&'static str>,
}

struct Container {
    id: String,
    runtime: Option<&'static str>,
}

enum Level {
    Container(Container),
    Conmon,
}

struct ColonForm {
    pod: Pod,
    container: Container,
}

/// A pod level: what was found above it described the node, not this pod.
fn enter_pod(id: &mut Identity, pod: Pod) {
    id.pod_uid = Some(pod.uid);
    id.qos = pod.qos.map(str::to_string);
    id.container_id = None;
    id.runtime = None;
    id.unit = None;
}

/// A container level: a unit above it (`system.slice`) was only where it was put.
fn enter_container(id: &mut Identity, c: Container) {
    id.container_id = Some(c.id);
    id.runtime = c.runtime.map(str::to_string);
    id.unit = None;
}

fn qos_word(w: &str) -> Option<&'static str> {
    match w {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// `kubepods-burstable-pod<uid>.slice`, `kubepods-pod<uid>.slice` (guaranteed),
/// `kubelet-kubepods-besteffort-pod<uid>.slice` (kind's `--cgroup-root=/kubelet`).
fn pod_slice(level: &str) -> Option<Pod> {
    let stem = level.strip_suffix(".slice")?;
    let (parent, raw_uid) = stem.rsplit_once("-pod")?;
    let mut words = parent.rsplit('-');
    let last = words.next()?;
    let qos = match qos_word(last) {
        Some(q) if words.next() == Some("kubepods") => q,
        Some(_) => return None,
        None if last == "kubepods" => "guaranteed",
        None => return None,
    };
    // systemd reads `-` as a level separator, so the kubelet writes the UID's
    // dashes as `_`.
    let uid = pod_uid(&raw_uid.replace('_', "-"))?;
    Some(Pod {
        uid,
        qos: Some(qos),
    })
}

/// `kubepods.slice`, `kubepods-burstable.slice`, `kubelet-kubepods.slice`: a level
/// of the kubelet's tree above the pods, with its QoS class if it has one.
fn kubepods_slice(level: &str) -> Option<Option<&'static str>> {
    let stem = level.strip_suffix(".slice")?;
    let mut words = stem.rsplit('-');
    let last = words.next()?;
    if last == "kubepods" {
        return Some(None);
    }
    let q = qos_word(last)?;
    (words.next() == Some("kubepods")).then_some(Some(q))
}

/// cgroupfs: `pod<uid>` under `kubepods/` (guaranteed) or `kubepods/<qos>/`.
fn cgroupfs_pod(level: &str, prev: &str) -> Option<Pod> {
    let uid = pod_uid(level.strip_prefix("pod")?)?;
    let qos = if prev == "kubepods" {
        Some("guaranteed")
    } else {
        qos_word(prev)
    };
    Some(Pod { uid, qos })
}

/// A pod UID as the API writes it, lowercased: a UUID (`8-4-4-4-12` hex) or, for a
/// static pod, the 32 hex digits of its config hash.
fn pod_uid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let hash = b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit);
    (uuid || hash).then(|| s.to_ascii_lowercase())
}

/// Container ids are 64 hex digits (lowercase as runtimes write them).
fn container_id(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// A container's own level: `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope` (`.scope` only with the systemd driver), a bare `<id>`
/// (cgroupfs), or CRI-O's `crio-conmon-<id>.scope`.
fn container_level(level: &str, prev: &str) -> Option<Level> {
    let name = level.strip_suffix(".scope").unwrap_or(level);
    if let Some(rest) = name.strip_prefix("crio-conmon-") {
        return container_id(rest).map(|_| Level::Conmon);
    }
    let (runtime, rest) = if let Some(r) = name.strip_prefix("cri-containerd-") {
        (Some(RUNTIME_CONTAINERD), r)
    } else if let Some(r) = name.strip_prefix("crio-") {
        (Some(RUNTIME_CRIO), r)
    } else if let Some(r) = name.strip_prefix("docker-") {
        (Some(RUNTIME_DOCKER), r)
    } else if name.len() == level.len() {
        // A bare id says which runtime only under Docker's own `/docker/`.
        (
            (prev == "docker" || prev == "docker.slice").then_some(RUNTIME_DOCKER),
            name,
        )
    } else {
        return None;
    };
    Some(Level::Container(Container {
        id: container_id(rest)?,
        runtime,
    }))
}

/// `kubepods-burstable-pod<uid with _>.slice:cri-containerd:<id>` (containerd with
/// the systemd driver on cgroup v1 when the path is left in its CRI form).
fn colon_form(level: &str) -> Option<ColonForm> {
    let mut parts = level.splitn(3, ':');
    let pod = pod_slice(parts.next()?)?;
    let runtime = match parts.next()? {
        "cri-containerd" => Some(RUNTIME_CONTAINERD),
        "crio" => Some(RUNTIME_CRIO),
        "docker" => Some(RUNTIME_DOCKER),
        _ => None,
    };
    let id = container_id(parts.next()?)?;
    Some(ColonForm {
        pod,
        container: Container { id, runtime },
    })
}

/// A systemd unit a process can live in.
fn is_unit(level: &str) -> bool {
    [".service", ".scope", ".slice"]
        .iter()
        .any(|s| level.len() > s.len() && level.ends_with(s))
}

/// systemd's `\xNN` escapes decoded (`system-serial\x2dgetty.slice`). Kept as
/// written when the result would not be printable UTF-8: an escape decoded into a
/// newline must not reach a report.
fn unescape_systemd(s: &str) -> Cow<'_, str> {
    if !s.contains("\\x") {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\' && b.get(i + 1) == Some(&b'x') {
            let hi = b.get(i + 2).and_then(|h| (*h as char).to_digit(16));
            let lo = b.get(i + 3).and_then(|l| (*l as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                // Two hex digits: at most 0xff, so the cast keeps every bit.
                out.push((hi * 16 + lo) as u8);
                i += 4;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(d) if !d.chars().any(char::is_control) => Cow::Owned(d),
        _ => Cow::Borrowed(s),
    }
}

/// The path to use from `/proc/PID/cgroup`: the unified (`0::`) line unless it is
/// just `/`, else the `memory` controller's, else `cpu`/`cpuacct`, else
/// `name=systemd`; `/` when every line says `/`; `None` when no line parses.
///
/// One exception, on hybrid layouts (v1 controllers beside a unified line): a
/// runtime that manages only the v1 controllers leaves its containers in its own
/// unified cgroup (`0::/system.slice/containerd.service` beside
/// `memory:/kubepods/…`), so a v1 line that names a pod wins over a unified line
/// that does not.
pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    let mut unified = None;
    let mut memory = None;
    let mut cpu = None;
    let mut systemd = None;
    let mut any_line = false;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hier.is_empty() || !hier.bytes().all(|c| c.is_ascii_digit()) || path.is_empty() {
            continue;
        }
        any_line = true;
        if path == "/" {
            continue;
        }
        if hier == "0" && controllers.is_empty() {
            unified.get_or_insert(path);
            continue;
        }
        for c in controllers.split(',') {
            match c {
                "memory" => {
                    memory.get_or_insert(path);
                }
                "cpu" | "cpuacct" => {
                    cpu.get_or_insert(path);
                }
                "name=systemd" => {
                    systemd.get_or_insert(path);
                }
                _ => {}
            }
        }
    }
    // In preference order; but any hierarchy that names a pod beats one that does not
    // (a kubelet on a hybrid layout, or a task moved in one v1 hierarchy only).
    let order = [unified, memory, cpu, systemd];
    let names_pod = |p: &&&str| parse_cgroup_path(p).pod_uid.is_some();
    let chosen = order
        .iter()
        .flatten()
        .find(names_pod)
        .or_else(|| order.iter().flatten().next())
        .copied();
    match chosen {
        Some(p) => Some(p.to_string()),
        None => any_line.then(|| "/".to_string()),
    }
}

/// `<namespace>_<pod>_<uid>`, a directory of `/var/log/pods`.
pub fn parse_pods_dir_entry(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_dns_label(ns) || !is_dns_subdomain(pod) {
        return None;
    }
    pod_uid(uid)?;
    Some((ns, pod, uid))
}

/// `<pod>_<namespace>_<container>-<container id>.log`, a link in
/// `/var/log/containers`: `(pod, namespace, container, id)`.
pub fn parse_containers_log_name(name: &str) -> Option<(&str, &str, &str, &str)> {
    let stem = name.strip_suffix(".log")?;
    let mut parts = stem.split('_');
    let (pod, ns, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_dns_subdomain(pod) || !is_dns_label(ns) {
        return None;
    }
    // Container names may hold dashes: the id is the last 64 characters.
    let (container, id) = rest.rsplit_once('-')?;
    if !is_dns_label(container) {
        return None;
    }
    container_id(id)?;
    Some((pod, ns, container, id))
}

/// What Kubernetes allows in a namespace or container name (RFC 1123 label).
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_subdomain(s) && !s.contains('.')
}

/// What Kubernetes allows in a pod name (RFC 1123 subdomain).
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    matches!((b.first(), b.last()), (Some(&f), Some(&l)) if alnum(f) && alnum(l))
        && b.len() <= 253
        && b.iter().all(|&c| alnum(c) || c == b'-' || c == b'.')
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PodNames {
    namespace: String,
    pod: String,
    /// The pod's container names (its log subdirectories), init containers too.
    containers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerNames {
    namespace: String,
    pod: String,
    container: String,
}

/// Names by pod UID and container id, from the kubelet's log layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pods: HashMap<String, PodNames>,
    containers: HashMap<String, ContainerNames>,
}

impl Names {
    /// From `/var/log/pods` directory names with their container subdirectories,
    /// and `/var/log/containers` file names. Entries that do not parse are skipped.
    pub fn from_entries(pods: &[(String, Vec<String>)], containers: &[String]) -> Self {
        let mut names = Self::default();
        for (dir, subdirs) in pods {
            let Some((ns, pod, uid)) = parse_pods_dir_entry(dir) else {
                continue;
            };
            names.pods.insert(
                uid.to_ascii_lowercase(),
                PodNames {
                    namespace: ns.to_string(),
                    pod: pod.to_string(),
                    containers: subdirs
                        .iter()
                        .filter(|c| is_dns_label(c))
                        .cloned()
                        .collect(),
                },
            );
        }
        for file in containers {
            let Some((pod, ns, container, id)) = parse_containers_log_name(file) else {
                continue;
            };
            names.containers.insert(
                id.to_ascii_lowercase(),
                ContainerNames {
                    namespace: ns.to_string(),
                    pod: pod.to_string(),
                    container: container.to_string(),
                },
            );
        }
        names
    }

    /// Pods known by UID.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Containers known by id.
    pub fn container_count(&self) -> usize {
        self.containers.len()
    }

    /// The container names of a pod (from its log subdirectories).
    pub fn containers_of(&self, pod_uid: &str) -> Option<&[String]> {
        self.pods
            .get(&pod_uid.to_ascii_lowercase())
            .map(|p| p.containers.as_slice())
    }

    /// Adds namespace, pod and container names from `id`'s pod UID and container
    /// id. Fields already set are kept (a name found before its pod was deleted
    /// stays). A container entry is trusted only when it agrees with the pod the
    /// UID names.
    pub fn fill(&self, id: &mut Identity) {
        if let Some(p) = id.pod_uid.as_ref().and_then(|u| self.pods.get(u)) {
            id.namespace.get_or_insert_with(|| p.namespace.clone());
            id.pod.get_or_insert_with(|| p.pod.clone());
        }
        let Some(c) = id
            .container_id
            .as_ref()
            .and_then(|c| self.containers.get(c))
        else {
            return;
        };
        let agrees = id.namespace.as_ref().is_none_or(|ns| *ns == c.namespace)
            && id.pod.as_ref().is_none_or(|p| *p == c.pod);
        if agrees {
            id.namespace.get_or_insert_with(|| c.namespace.clone());
            id.pod.get_or_insert_with(|| c.pod.clone());
            id.container.get_or_insert_with(|| c.container.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ids and UIDs from real nodes (coroot-node-agent's and OBI's fixtures, a kind
    // cluster); the shapes around them are the ones each driver and runtime writes.
    const UID: &str = "8712f785-1a3e-41ec-a00b-e2dcc77431cb";
    const UID_: &str = "8712f785_1a3e_41ec_a00b_e2dcc77431cb";
    const STATIC_UID: &str = "9729a196c4723b60ab401eaff722982d";
    const CTR: &str = "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd";
    const NODE: &str = "3350ade4226f0adcd9e4e9545d7c2a16a5aa362d12315f2a88e2024cea1246cf";

    /// What a path should give: (pod_uid, container_id, qos, runtime, unit).
    type Want = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );

    fn check(path: &str, want: Want) {
        let got = parse_cgroup_path(path);
        let got_t = (
            got.pod_uid.as_deref(),
            got.container_id.as_deref(),
            got.qos.as_deref(),
            got.runtime.as_deref(),
            got.unit.as_deref(),
        );
        assert_eq!(got_t, want, "{path}");
        assert_eq!(got.cgroup.as_deref(), Some(path), "{path}");
        assert_eq!(got.namespace, None, "{path}: names come from Names");
    }

    fn pod(qos: &'static str, ctr: Option<&'static str>, runtime: Option<&'static str>) -> Want {
        (Some(UID), ctr, Some(qos), runtime, None)
    }

    #[test]
    fn systemd_driver() {
        let burstable =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        let besteffort = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        let guaranteed = format!("/kubepods.slice/kubepods-pod{UID_}.slice");
        let cases: Vec<(String, Want)> = vec![
            (
                format!("{burstable}/cri-containerd-{CTR}.scope"),
                pod("burstable", Some(CTR), Some("containerd")),
            ),
            (
                format!("{besteffort}/docker-{CTR}.scope"),
                pod("besteffort", Some(CTR), Some("docker")),
            ),
            (
                format!("{burstable}/crio-{CTR}.scope"),
                pod("burstable", Some(CTR), Some("crio")),
            ),
            // crun puts the payload one level down.
            (
                format!("{guaranteed}/crio-{CTR}.scope/container"),
                pod("guaranteed", Some(CTR), Some("crio")),
            ),
            // conmon is CRI-O's, beside the container: the pod, not the container.
            (
                format!("{burstable}/crio-conmon-{CTR}.scope"),
                pod("burstable", None, Some("crio")),
            ),
            (
                format!("{guaranteed}/cri-containerd-{CTR}.scope"),
                pod("guaranteed", Some(CTR), Some("containerd")),
            ),
            // The pod level itself, and the levels above it.
            (burstable.clone(), pod("burstable", None, None)),
            (
                "/kubepods.slice/kubepods-besteffort.slice".into(),
                (None, None, Some("besteffort"), None, None),
            ),
            ("/kubepods.slice".into(), (None, None, None, None, None)),
            // Without the leading slash, as some tools print it.
            (
                format!("{}/cri-containerd-{CTR}.scope", &burstable[1..]),
                pod("burstable", Some(CTR), Some("containerd")),
            ),
            // No `.scope` (seen on older containerd).
            (
                format!("{burstable}/cri-containerd-{CTR}"),
                pod("burstable", Some(CTR), Some("containerd")),
            ),
        ];
        for (path, want) in cases {
            check(&path, want);
        }
    }

    #[test]
    fn cgroupfs_driver() {
        let cases: Vec<(String, Want)> = vec![
            (
                format!("/kubepods/burstable/pod{UID}/{CTR}"),
                pod("burstable", Some(CTR), None),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{CTR}"),
                pod("besteffort", Some(CTR), None),
            ),
            (
                format!("/kubepods/pod{UID}/{CTR}"),
                pod("guaranteed", Some(CTR), None),
            ),
            (
                format!("/kubepods/pod{UID}/crio-{CTR}"),
                pod("guaranteed", Some(CTR), Some("crio")),
            ),
            // A process in a sub-cgroup of its container (kube-proxy's own).
            (
                format!("/kubepods/besteffort/pod{UID}/{CTR}/kube-proxy"),
                pod("besteffort", Some(CTR), None),
            ),
            (
                format!("/kubepods/burstable/pod{UID}"),
                pod("burstable", None, None),
            ),
            (
                "/kubepods/burstable".into(),
                (None, None, Some("burstable"), None, None),
            ),
            // Upper-case hex is read, and written as the API does.
            (
                format!("/kubepods/pod{}/{CTR}", UID.to_uppercase()),
                pod("guaranteed", Some(CTR), None),
            ),
        ];
        for (path, want) in cases {
            check(&path, want);
        }
    }

    #[test]
    fn static_pods_have_32_hex_uids() {
        let s = Some(STATIC_UID);
        check(
            &format!("/kubepods/burstable/pod{STATIC_UID}/{CTR}"),
            (s, Some(CTR), Some("burstable"), None, None),
        );
        check(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{CTR}.scope"
            ),
            (s, Some(CTR), Some("burstable"), Some("containerd"), None),
        );
        check(
            &format!("/kubepods.slice/kubepods-pod{STATIC_UID}.slice/crio-{CTR}.scope"),
            (s, Some(CTR), Some("guaranteed"), Some("crio"), None),
        );
    }

    #[test]
    fn nested_under_a_prefix() {
        let kind_pod = format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"
        );
        let cases: Vec<(String, Want)> = vec![
            // kind and minikube: `--cgroup-root=/kubelet`, seen from the node.
            (
                format!("/{kind_pod}/cri-containerd-{CTR}.scope"),
                pod("besteffort", Some(CTR), Some("containerd")),
            ),
            (
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CTR}.scope"),
                pod("guaranteed", Some(CTR), Some("containerd")),
            ),
            // ... and from the host: the node is a Docker container, the innermost
            // container is the pod's.
            (
                format!("/system.slice/docker-{NODE}.scope/{kind_pod}/cri-containerd-{CTR}.scope"),
                pod("besteffort", Some(CTR), Some("containerd")),
            ),
            (
                format!("/docker/{NODE}/{kind_pod}/cri-containerd-{CTR}.scope"),
                pod("besteffort", Some(CTR), Some("containerd")),
            ),
            // kind with the cgroupfs driver.
            (
                format!("/kubelet/kubepods/burstable/pod{UID}/{CTR}"),
                pod("burstable", Some(CTR), None),
            ),
            // The node's own kubelet, seen from the host.
            (
                format!("/system.slice/docker-{NODE}.scope/system.slice/kubelet.service"),
                (None, Some(NODE), None, Some("docker"), Some("kubelet.service")),
            ),
            // Outside the reader's cgroup namespace.
            (
                format!("/../../../../system.slice/docker-{NODE}.scope"),
                (None, Some(NODE), None, Some("docker"), None),
            ),
            // containerd on cgroup v1 with the systemd driver, path left in CRI form.
            (
                format!("/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CTR}"),
                pod("burstable", Some(CTR), Some("containerd")),
            ),
        ];
        for (path, want) in cases {
            check(&path, want);
        }
    }

    #[test]
    fn host_processes_and_plain_containers() {
        let unit = |u| (None, None, None, None, Some(u));
        let cases: Vec<(String, Want)> = vec![
            (
                "/system.slice/kubelet.service".into(),
                unit("kubelet.service"),
            ),
            (
                "/runtime.slice/kubelet.service".into(),
                unit("kubelet.service"),
            ),
            (
                "/system.slice/system-getty.slice/getty@tty1.service".into(),
                unit("getty@tty1.service"),
            ),
            (
                r"/system.slice/system-serial\x2dgetty.slice/serial-getty@ttyS0.service".into(),
                unit("serial-getty@ttyS0.service"),
            ),
            (
                r"/system.slice/system-serial\x2dgetty.slice".into(),
                unit("system-serial-getty.slice"),
            ),
            (
                "/system.slice/system-postgresql.slice/postgresql@9.4-main.service".into(),
                unit("postgresql@9.4-main.service"),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                unit("session-3.scope"),
            ),
            ("/init.scope".into(), unit("init.scope")),
            (
                "/lxc.payload.first/system.slice/systemd-logind.service".into(),
                unit("systemd-logind.service"),
            ),
            // Docker without Kubernetes, both drivers.
            (
                format!("/system.slice/docker-{CTR}.scope"),
                (None, Some(CTR), None, Some("docker"), None),
            ),
            (
                format!("/docker/{CTR}"),
                (None, Some(CTR), None, Some("docker"), None),
            ),
            // A bare id elsewhere: a container of some runtime.
            (format!("/{CTR}"), (None, Some(CTR), None, None, None)),
            ("/".into(), (None, None, None, None, None)),
            // Talos's runtime and podman are not read (no pod, no unit suffix).
            ("/podruntime/kubelet".into(), (None, None, None, None, None)),
        ];
        for (path, want) in cases {
            check(&path, want);
        }
        // CRI-O's monitor in the system slice (conmon_cgroup = "system.slice"): a
        // host unit of CRI-O's, no container.
        let conmon = parse_cgroup_path(&format!("/system.slice/crio-conmon-{CTR}.scope"));
        assert_eq!(conmon.container_id, None);
        assert_eq!(conmon.runtime.as_deref(), Some("crio"));
        assert_eq!(conmon.unit, Some(format!("crio-conmon-{CTR}.scope")));
    }

    #[test]
    fn escaped_kubepods_slices_decode() {
        check(
            &format!(
                r"/kubepods.slice/kubepods\x2dburstable.slice/kubepods\x2dburstable\x2dpod{UID_}.slice/cri\x2dcontainerd\x2d{CTR}.scope"
            ),
            pod("burstable", Some(CTR), Some("containerd")),
        );
    }

    #[test]
    fn unreadable_levels_stay_none() {
        let cases: Vec<String> = vec![
            // UIDs and ids of the wrong length or alphabet.
            format!("/kubepods/burstable/pod{}/x", &UID[..35]),
            "/kubepods/burstable/podxyz".into(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod.slice".into(),
            format!("/kubepods/pod{UID}z"),
            "/system.slice/docker-abc.scope".into(),
            // A pod slice outside the kubepods tree is someone's own slice.
            format!("/system.slice/myapp-pod{UID_}.slice"),
            // `pod<uid>` outside kubepods is not a pod.
            format!("/pod{UID}"),
        ];
        for path in cases {
            let got = parse_cgroup_path(&path);
            assert_eq!(got.pod_uid, None, "{path}");
            assert_eq!(got.container_id, None, "{path}");
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let long = "a/".repeat(100_000);
        let deep_pods = format!("/kubepods/pod{UID}").repeat(10_000);
        let inputs: Vec<String> = vec![
            String::new(),
            "/".into(),
            "//".into(),
            "..".into(),
            "/../..".into(),
            "/./.".into(),
            long,
            deep_pods.clone(),
            "\\x".into(),
            "\\".into(),
            r"\xzz\x0".into(),
            r"/system.slice/\xff\xfe.service".into(),
            r"/system.slice/a\x0aepisode.service".into(),
            r"/system.slice/\xc3\xa9t\xc3\xa9.service".into(),
            "/system.slice/ünïcødé-☃.service".into(),
            "/kubepods/pod🙂/🙂".into(),
            "kubepods-pod.slice:a:b".into(),
            ":::".into(),
            "\0".into(),
            "-.slice".into(),
            ".slice".into(),
            "-pod.slice".into(),
            format!("/kubepods.slice/kubepods-pod{}.slice", "_".repeat(36)),
        ];
        for path in &inputs {
            let id = parse_cgroup_path(path);
            let _ = id.short();
        }
        // Decoded escapes are kept only when printable UTF-8.
        assert_eq!(
            parse_cgroup_path(r"/system.slice/a\x0aepisode.service")
                .unit
                .as_deref(),
            Some(r"a\x0aepisode.service")
        );
        assert_eq!(
            parse_cgroup_path(r"/system.slice/\xff\xfe.service")
                .unit
                .as_deref(),
            Some(r"\xff\xfe.service")
        );
        assert_eq!(
            parse_cgroup_path(r"/system.slice/\xc3\xa9t\xc3\xa9.service")
                .unit
                .as_deref(),
            Some("été.service")
        );
        assert_eq!(parse_cgroup_path("").cgroup, None);
        // The innermost of many pods.
        assert_eq!(parse_cgroup_path(&deep_pods).pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn proc_cgroup_v2_and_v1() {
        let kube = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CTR}.scope"
        );
        let v1_kube = format!("/kubepods/burstable/pod{UID}/{CTR}");
        let cases: Vec<(String, Option<String>)> = vec![
            // Pure v2.
            (format!("0::{kube}\n"), Some(kube.clone())),
            // Pure v1, memory and cpu,cpuacct sharing a hierarchy.
            (
                format!(
                    "11:devices:{v1_kube}\n10:memory:{v1_kube}\n3:cpu,cpuacct:{v1_kube}\n1:name=systemd:{v1_kube}\n"
                ),
                Some(v1_kube.clone()),
            ),
            // Hybrid, as on this machine: empty unified, memory set, cpu and cpuacct
            // on their own lines.
            (
                "9:name=systemd:/\n4:memory:/process_api/a55093dee2c7650d59df05e268e8f347\n2:cpuacct:/\n1:cpu:/\n0::/\n".into(),
                Some("/process_api/a55093dee2c7650d59df05e268e8f347".into()),
            ),
            // Hybrid with the unified line set: it wins.
            (
                "6:memory:/system.slice/ssh.service\n1:name=systemd:/system.slice/ssh.service\n0::/system.slice/ssh.service\n".into(),
                Some("/system.slice/ssh.service".into()),
            ),
            // Memory first, then cpu, then name=systemd.
            (
                "4:cpu,cpuacct:/a.slice/cpu.service\n1:name=systemd:/s.service\n".into(),
                Some("/a.slice/cpu.service".into()),
            ),
            (
                "4:cpu,cpuacct:/\n2:devices:/system.slice/system-getty.slice\n1:name=systemd:/system.slice/system-getty.slice/getty@tty1.service\n".into(),
                Some("/system.slice/system-getty.slice/getty@tty1.service".into()),
            ),
            // Hybrid where the runtime managed only v1: the pod is in memory's line.
            (
                format!("12:memory:{v1_kube}\n2:cpu,cpuacct:{v1_kube}\n0::/reserved.slice/containerd.service\n"),
                Some(v1_kube.clone()),
            ),
            // A kernel thread or the init process: every line `/`.
            ("0::/\n".into(), Some("/".into())),
            ("5:memory:/\n0::/\n".into(), Some("/".into())),
            // Colons in the path are part of it.
            (
                format!("1:name=systemd:/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CTR}\n"),
                Some(format!("/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CTR}")),
            ),
            // No newline at the end, CRLF, junk.
            ("0::/a.service".into(), Some("/a.service".into())),
            (String::new(), None),
            ("garbage\n::\nx:memory:/a\n:memory:/b\n".into(), None),
            ("\n\n0::\n".into(), None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_proc_cgroup(&text), want, "{text:?}");
        }
        let _ = parse_proc_cgroup(&"1:memory:/a\n".repeat(50_000));
        let _ = parse_proc_cgroup("0::/\u{202e}\n1:\u{0}:\u{0}");
    }

    #[test]
    fn pods_dir_entries() {
        let ok: &[(&str, (&str, &str, &str))] = &[
            (
                "kube-system_coredns-5d78c9869d-x2x7k_8712f785-1a3e-41ec-a00b-e2dcc77431cb",
                ("kube-system", "coredns-5d78c9869d-x2x7k", UID),
            ),
            (
                "kube-system_kube-apiserver-node-1.example.com_9729a196c4723b60ab401eaff722982d",
                (
                    "kube-system",
                    "kube-apiserver-node-1.example.com",
                    STATIC_UID,
                ),
            ),
            ("a_b_8712f785-1a3e-41ec-a00b-e2dcc77431cb", ("a", "b", UID)),
        ];
        for (name, want) in ok {
            assert_eq!(parse_pods_dir_entry(name), Some(*want), "{name}");
        }
        let bad = [
            "",
            "_",
            "__",
            "default_web_",
            "default__8712f785-1a3e-41ec-a00b-e2dcc77431cb",
            "default_web_8712f785-1a3e-41ec-a00b-e2dcc77431cb_x",
            "default_web_not-a-uid",
            "Default_web_8712f785-1a3e-41ec-a00b-e2dcc77431cb",
            "default_-web_8712f785-1a3e-41ec-a00b-e2dcc77431cb",
            "default_we/b_8712f785-1a3e-41ec-a00b-e2dcc77431cb",
            "a.b_web_8712f785-1a3e-41ec-a00b-e2dcc77431cb",
            "ns_pöd_8712f785-1a3e-41ec-a00b-e2dcc77431cb",
        ];
        for name in bad {
            assert_eq!(parse_pods_dir_entry(name), None, "{name}");
        }
        let long_ns = format!("{}_web_{UID}", "a".repeat(64));
        assert_eq!(parse_pods_dir_entry(&long_ns), None);
    }

    #[test]
    fn containers_log_names() {
        let name = format!("coredns-5d78c9869d-x2x7k_kube-system_coredns-{CTR}.log");
        assert_eq!(
            parse_containers_log_name(&name),
            Some(("coredns-5d78c9869d-x2x7k", "kube-system", "coredns", CTR))
        );
        // Dashes in the container name, dots in the pod name.
        let name = format!("etcd-node-1.example.com_kube-system_my-side-car-{CTR}.log");
        assert_eq!(
            parse_containers_log_name(&name),
            Some(("etcd-node-1.example.com", "kube-system", "my-side-car", CTR))
        );
        let bad = [
            String::new(),
            ".log".into(),
            format!("web_default_app-{CTR}"),
            format!("web_default_app-{CTR}.log.1"),
            format!("web_default_app{CTR}.log"),
            format!("web_default_-{CTR}.log"),
            format!("web_default_app-{}.log", &CTR[1..]),
            format!("web_default_app-{}g.log", &CTR[1..]),
            format!("web_app-{CTR}.log"),
            format!("web_default_x_app-{CTR}.log"),
            format!("web_default_App-{CTR}.log"),
            format!("web_default_app-☃{}.log", &CTR[3..]),
        ];
        for name in &bad {
            assert_eq!(parse_containers_log_name(name), None, "{name}");
        }
    }

    fn names() -> Names {
        Names::from_entries(
            &[
                (
                    format!("shop_web-7c9f_{UID}"),
                    vec!["app".into(), "init-db".into(), "Bad_Dir".into()],
                ),
                (
                    format!("kube-system_kube-apiserver-node1_{STATIC_UID}"),
                    vec!["kube-apiserver".into()],
                ),
                ("junk".into(), vec![]),
            ],
            &[
                format!("web-7c9f_shop_app-{CTR}.log"),
                format!("other_elsewhere_x-{NODE}.log"),
                "junk.log".into(),
            ],
        )
    }

    #[test]
    fn names_fill_from_uid_and_container_id() {
        let n = names();
        assert_eq!((n.pod_count(), n.container_count()), (2, 2));
        assert_eq!(
            n.containers_of(UID),
            Some(&["app".to_string(), "init-db".to_string()][..])
        );

        let mut id = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CTR}.scope"
        ));
        n.fill(&mut id);
        assert_eq!(id.short().as_deref(), Some("shop/web-7c9f/app"));
        assert_eq!(id.qos.as_deref(), Some("burstable"));

        // The pod's sandbox (pause) has an id the logs do not name.
        let mut id = parse_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{}", "f".repeat(64)));
        n.fill(&mut id);
        assert_eq!(id.short().as_deref(), Some("shop/web-7c9f"));

        // Static pod by its hash UID.
        let mut id = parse_cgroup_path(&format!("/kubepods/burstable/pod{STATIC_UID}"));
        n.fill(&mut id);
        assert_eq!(
            id.short().as_deref(),
            Some("kube-system/kube-apiserver-node1")
        );

        // A container id alone (its pod's log dir already gone) still names it.
        let mut id = Identity {
            container_id: Some(CTR.into()),
            ..Identity::default()
        };
        n.fill(&mut id);
        assert_eq!(id.short().as_deref(), Some("shop/web-7c9f/app"));

        // A container entry that disagrees with the pod is not trusted.
        let mut id = parse_cgroup_path(&format!("/kubepods/pod{UID}/{NODE}"));
        n.fill(&mut id);
        assert_eq!(id.short().as_deref(), Some("shop/web-7c9f"));
        assert_eq!(id.container, None);

        // Names already set are kept.
        let mut id = Identity {
            pod_uid: Some(UID.into()),
            namespace: Some("before".into()),
            pod: Some("deleted".into()),
            ..Identity::default()
        };
        n.fill(&mut id);
        assert_eq!(id.short().as_deref(), Some("before/deleted"));

        // Unknown ids: nothing added.
        let mut id = parse_cgroup_path(&format!(
            "/kubepods/pod{}/{}",
            UID.replace('8', "9"),
            "e".repeat(64)
        ));
        let before = id.clone();
        n.fill(&mut id);
        assert_eq!(id, before);
    }

    #[test]
    fn short_words() {
        let id = |f: fn(&mut Identity)| {
            let mut i = Identity::default();
            f(&mut i);
            i.short()
        };
        assert_eq!(id(|_| {}), None);
        assert_eq!(
            id(|i| i.pod_uid = Some(UID.into())).as_deref(),
            Some(format!("pod {UID}").as_str())
        );
        assert_eq!(
            id(|i| i.unit = Some("kubelet.service".into())).as_deref(),
            Some("unit kubelet.service")
        );
        assert_eq!(
            id(|i| i.container_id = Some(CTR.into())).as_deref(),
            Some("container 73051af27110")
        );
        // Whatever a dump from elsewhere holds.
        assert_eq!(
            id(|i| i.container_id = Some("☃☃".into())).as_deref(),
            Some("container ☃☃")
        );
        assert_eq!(
            id(|i| i.namespace = Some("ns".into())),
            None,
            "a namespace alone names nothing"
        );
    }

    #[test]
    fn serde_skips_what_is_unknown() {
        let id = parse_cgroup_path("/system.slice/kubelet.service");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(
            json,
            r#"{"unit":"kubelet.service","cgroup":"/system.slice/kubelet.service"}"#
        );
        let back: Identity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let empty: Identity = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Identity::default());
    }
}
