//! The workload that owns a pod, inferred from the pod's name alone: the agent has no
//! API access, and pods are renamed by every rollout while their owner stays. The
//! controllers name their pods so (Kubernetes 1.8 and later):
//!
//! | owner | pod name |
//! | --- | --- |
//! | Deployment | `<name>-<pod-template-hash>-<suffix>` (the ReplicaSet is `<name>-<hash>`) |
//! | StatefulSet | `<name>-<ordinal>` |
//! | CronJob | `<name>-<scheduled minute since the epoch>-<suffix>` (its Job is `<name>-<minute>`) |
//! | Job (indexed) | `<name>-<index>-<suffix>` |
//! | DaemonSet, Job | `<name>-<suffix>` |
//!
//! where `<suffix>` is 5 characters and `<hash>` up to 10, all drawn from the API
//! server's alphabet for generated names, `bcdfghjklmnpqrstvwxz2456789` (no vowels, no
//! 0/1/3, so that no word is spelled), which is what tells a generated part from a word
//! of the name. What the name cannot say: a DaemonSet's pod and a plain Job's look
//! alike (both are reported as DaemonSet), a bare ReplicaSet's looks like a
//! Deployment's, and a pod whose name matches none of the shapes (a static pod, one
//! named by hand, or one whose generated name the API server cut to 63 characters,
//! which it does to a prefix over 58 before adding the suffix) is its own workload
//! with no kind.

/// The characters Kubernetes draws generated name parts from.
const ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";

/// A generated suffix's length (`generateName`).
const SUFFIX_LEN: usize = 5;

/// Lengths of a pod-template-hash: the decimal digits of a 32-bit hash, each mapped
/// into the alphabet, so 10 at most; 8 or more for 99.9 % of hashes. Shorter words
/// from the alphabet (`db`, `cms`) are more likely part of the name.
const HASH_LEN: std::ops::RangeInclusive<usize> = 6..=10;

/// A CronJob's Job carries its scheduled time in minutes since the epoch: 8 digits
/// from 1989 to 2160. Fewer digits are an indexed Job's completion index.
const CRON_MINUTE_DIGITS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
        }
    }
}

/// A pod's owner as far as its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload<'a> {
    pub name: &'a str,
    /// None when the name matches no controller's shape (then `name` is the pod's).
    pub kind: Option<Kind>,
}

fn generated(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| ALPHABET.contains(c))
}

fn suffix(s: &str) -> bool {
    s.len() == SUFFIX_LEN && generated(s)
}

fn decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A StatefulSet ordinal: a decimal number without leading zeros.
fn ordinal(s: &str) -> bool {
    decimal(s) && (s == "0" || !s.starts_with('0'))
}

/// The owner of the pod named `pod`.
pub fn infer(pod: &str) -> Workload<'_> {
    let unknown = Workload {
        name: pod,
        kind: None,
    };
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return unknown;
    };
    if rest.is_empty() {
        return unknown;
    }
    if ordinal(last) {
        return Workload {
            name: rest,
            kind: Some(Kind::StatefulSet),
        };
    }
    if !suffix(last) {
        return unknown;
    }
    if let Some((name, middle)) = rest.rsplit_once('-').filter(|(n, _)| !n.is_empty()) {
        // A scheduled minute first: decimal, and it may use 0, 1 and 3, which no hash
        // does (a hash of 8 or more digits only is rarer than 1 in 40 000).
        if decimal(middle) && middle.len() >= CRON_MINUTE_DIGITS {
            return Workload {
                name,
                kind: Some(Kind::CronJob),
            };
        }
        if HASH_LEN.contains(&middle.len()) && generated(middle) {
            return Workload {
                name,
                kind: Some(Kind::Deployment),
            };
        }
        if decimal(middle) {
            return Workload {
                name,
                kind: Some(Kind::Job),
            };
        }
    }
    Workload {
        name: rest,
        kind: Some(Kind::DaemonSet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_from_real_world_pod_names() {
        use Kind::*;
        for (pod, name, kind) in [
            // Deployments: hashes of 10, 9 and 8 characters; names with dashes.
            ("coredns-5d78c9869d-8xk2p", "coredns", Some(Deployment)),
            (
                "metrics-server-6d94bc8694-mtv9q",
                "metrics-server",
                Some(Deployment),
            ),
            (
                "ingress-nginx-controller-7d9b5f7c8-2zqwm",
                "ingress-nginx-controller",
                Some(Deployment),
            ),
            (
                "payments-api-8b7f4d6c5-x2k4p",
                "payments-api",
                Some(Deployment),
            ),
            (
                "argocd-repo-server-57bdbf899c-9r5kw",
                "argocd-repo-server",
                Some(Deployment),
            ),
            ("ledger-7f9c8d5b6-x2k4p", "ledger", Some(Deployment)),
            ("cart-7d9b5f7c8-x2k4p", "cart", Some(Deployment)),
            // A hash of digits only (all from the alphabet) is still a hash.
            ("web-9842756-zx7k2", "web", Some(Deployment)),
            // StatefulSets.
            ("web-0", "web", Some(StatefulSet)),
            ("prometheus-k8s-1", "prometheus-k8s", Some(StatefulSet)),
            ("kafka-broker-12", "kafka-broker", Some(StatefulSet)),
            (
                "elasticsearch-master-2",
                "elasticsearch-master",
                Some(StatefulSet),
            ),
            // DaemonSets (and plain Jobs, which look the same).
            ("kube-proxy-x7kqp", "kube-proxy", Some(DaemonSet)),
            ("cilium-4hq8z", "cilium", Some(DaemonSet)),
            ("node-exporter-bz9wl", "node-exporter", Some(DaemonSet)),
            ("fluent-bit-t5v2m", "fluent-bit", Some(DaemonSet)),
            // A short alphabet-only word before the suffix belongs to the name.
            ("orders-db-x2k4p", "orders-db", Some(DaemonSet)),
            // CronJobs: the scheduled minute since the epoch, then the suffix.
            ("backup-28474560-k2x9p", "backup", Some(CronJob)),
            (
                "nightly-report-29409120-7vz4q",
                "nightly-report",
                Some(CronJob),
            ),
            // An indexed Job: a small index.
            ("train-shard-3-q8w2n", "train-shard", Some(Job)),
            ("render-10305-b8x2k", "render", Some(Job)),
            // No controller's shape: the pod is its own workload.
            (
                "kube-apiserver-control-plane",
                "kube-apiserver-control-plane",
                None,
            ),
            ("etcd-node-a", "etcd-node-a", None),
            ("debugger", "debugger", None),
            // Vowels and 0/1/3 are never generated: words, not suffixes.
            ("nginx-proxy", "nginx-proxy", None),
            ("my-app-redis", "my-app-redis", None),
            ("api-v1-abcde", "api-v1-abcde", None),
            ("zone-x2k4p1", "zone-x2k4p1", None),
            // A long Deployment's pod: the prefix cut to 58 characters inside the hash,
            // then the suffix (no dash before it).
            (
                "payments-reconciliation-worker-eu-west-1-primary-canary-7dx2k4p",
                "payments-reconciliation-worker-eu-west-1-primary-canary-7dx2k4p",
                None,
            ),
            // A leading zero is no ordinal.
            ("shard-01", "shard-01", None),
            // Degenerate names.
            ("", "", None),
            ("-0", "-0", None),
            ("-x2k4p", "-x2k4p", None),
            ("x2k4p", "x2k4p", None),
        ] {
            let w = infer(pod);
            assert_eq!((w.name, w.kind), (name, kind), "{pod}");
        }
    }

    #[test]
    fn the_alphabet_has_no_vowels_and_no_digit_that_reads_as_a_letter() {
        for c in "aeiouy013".chars() {
            assert!(!ALPHABET.contains(c), "{c}");
        }
        assert_eq!(ALPHABET.len(), 27);
    }
}
