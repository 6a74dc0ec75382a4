//! Where the matrix's kernels come from: Debian packages, found and downloaded with
//! apt. Bookworm's kernels (6.1, 6.1-rt, 6.12) come through the machine's own apt
//! configuration. Older series (5.10) are in `bullseye`, which this machine does not
//! list: for those apt runs with a private configuration under the vmtest cache
//! (`~/.cache/stalltrace/apt/<suite>/`: its own sources list, lists and package cache),
//! with the same URI as the machine's bookworm entry and Debian's archive keyring, so
//! the machine's sources, lists and caches are never touched. The machine's apt.conf.d
//! still applies (a proxy set there is kept); its update hooks and the AppStream
//! indexes are switched off in the private configuration.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::{cache_root, run_ok, version_key};

/// Suites searched, in order, after the machine's own configuration.
const PRIVATE_SUITES: &[&str] = &["bullseye"];

/// Debian's archive keyring (bookworm's carries the bullseye keys too).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Which apt configuration knows a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The machine's own (`apt-get` as is).
    Machine,
    /// A private configuration for a suite the machine does not list: the path of its
    /// apt.conf (passed with `-c`).
    Private { suite: String, conf: PathBuf },
}

impl Source {
    /// `apt-get`/`apt-cache` with this configuration.
    pub fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        if let Source::Private { conf, .. } = self {
            c.arg("-c").arg(conf);
        }
        c
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Machine => "the machine's apt sources".into(),
            Source::Private { suite, .. } => format!("Debian {suite} (private apt configuration)"),
        }
    }
}

/// A matrix entry as asked: `5.10`, `6.1`, `6.1-rt` (the newest package of a series,
/// generic or PREEMPT_RT flavour), or an exact package name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Series { series: String, rt: bool },
    Package(String),
}

impl Entry {
    pub fn parse(s: &str) -> Self {
        if s.starts_with("linux-image-") {
            return Entry::Package(s.to_string());
        }
        match s.strip_suffix("-rt") {
            Some(series) => Entry::Series {
                series: series.to_string(),
                rt: true,
            },
            None => Entry::Series {
                series: s.to_string(),
                rt: false,
            },
        }
    }

    /// The newest package of `names` (one a line) this entry means.
    pub fn pick(&self, names: &str) -> Option<String> {
        match self {
            Entry::Package(p) => names
                .lines()
                .map(str::trim)
                .find(|n| n == p)
                .map(Into::into),
            Entry::Series { series, rt } => newest_package(series, *rt, names),
        }
    }

    /// The prefix `apt-cache pkgnames` is asked with.
    fn prefix(&self) -> String {
        match self {
            Entry::Package(p) => p.clone(),
            Entry::Series { series, .. } => format!("linux-image-{series}."),
        }
    }
}

/// The newest unsigned amd64 image of a series: the generic flavour (not `cloud`, which
/// lacks 9p; not `rt`) or, with `rt`, the PREEMPT_RT one.
pub fn newest_package(series: &str, rt: bool, names: &str) -> Option<String> {
    names
        .lines()
        .map(str::trim)
        .filter(|n| {
            n.strip_prefix("linux-image-")
                .and_then(|v| v.strip_suffix("-amd64-unsigned"))
                .is_some_and(|v| {
                    v.starts_with(&format!("{series}."))
                        && !v.contains("cloud")
                        && v.ends_with("-rt") == rt
                })
        })
        .max_by_key(|n| version_key(n))
        .map(str::to_string)
}

fn pkgnames(src: &Source, prefix: &str) -> String {
    src.command("apt-cache")
        .args(["pkgnames", prefix])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The package an entry means and the configuration that can download it. First what
/// the configurations know already (the machine's, then each private suite); then each
/// is refreshed once, the private ones first, so that a series only bullseye has does
/// not refresh the machine's own lists.
pub fn resolve(entry: &Entry) -> anyhow::Result<(String, Source)> {
    let mut sources = vec![];
    for suite in PRIVATE_SUITES {
        sources.push(private(suite)?);
    }
    sources.push(Source::Machine);
    let known = |src: &Source| entry.pick(&pkgnames(src, &entry.prefix()));
    for src in sources.iter().rev() {
        if let Some(p) = known(src) {
            return Ok((p, src.clone()));
        }
    }
    for src in &sources {
        eprintln!(
            "vmtest: {} has no {}*; running apt-get update for it",
            src.describe(),
            entry.prefix()
        );
        if let Err(e) = update(src) {
            eprintln!("vmtest: {e:#}");
        }
        if let Some(p) = known(src) {
            return Ok((p, src.clone()));
        }
    }
    let tried: Vec<String> = sources.iter().map(Source::describe).collect();
    bail!(
        "no Debian package for {entry:?} ({}*-amd64-unsigned) in {}",
        entry.prefix(),
        tried.join(", ")
    )
}

fn update(src: &Source) -> anyhow::Result<()> {
    run_ok(src.command("apt-get").args(["update", "-qq"])).map(drop)
}

/// Downloads `package` into `dir` (`apt-get download`).
pub fn download(src: &Source, package: &str, dir: &Path) -> anyhow::Result<()> {
    eprintln!("vmtest: downloading {package} from {}", src.describe());
    run_ok(
        src.command("apt-get")
            .args(["download", "-q", package])
            .current_dir(dir),
    )
    .map(drop)
}

/// The private configuration of `suite`, written (again) under the cache.
fn private(suite: &str) -> anyhow::Result<Source> {
    let dir = cache_root().join("apt").join(suite);
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d)).with_context(|| format!("creating {}", dir.display()))?;
    }
    let uri = machine_debian_uri();
    fs::write(
        dir.join("sources.list"),
        format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"),
    )?;
    let conf = dir.join("apt.conf");
    fs::write(&conf, private_conf(&dir))?;
    Ok(Source::Private {
        suite: suite.into(),
        conf,
    })
}

/// apt.conf of a private configuration rooted at `dir`. `#clear` drops what the
/// machine's apt.conf.d adds that has no business here: hooks run after an update
/// (AppStream, PackageKit: they would refresh the machine's own caches) and the
/// AppStream indexes (megabytes nobody reads).
fn private_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "Dir::Etc::SourceList \"{d}/sources.list\";\n\
         Dir::Etc::SourceParts \"/dev/null\";\n\
         Dir::State::Lists \"{d}/lists\";\n\
         Dir::Cache \"{d}/cache\";\n\
         Dir::Cache::pkgcache \"\";\n\
         Dir::Cache::srcpkgcache \"\";\n\
         Acquire::Languages \"none\";\n\
         #clear APT::Update::Post-Invoke-Success;\n\
         #clear APT::Update::Post-Invoke;\n\
         #clear Acquire::IndexTargets::deb::DEP-11;\n\
         #clear Acquire::IndexTargets::deb::DEP-11-icons-small;\n\
         #clear Acquire::IndexTargets::deb::DEP-11-icons;\n"
    )
}

/// The URI of the machine's Debian bookworm entry (deb822 `.sources` or one-line
/// `.list`), so the private suites go through the same mirror or proxy.
fn machine_debian_uri() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter(|p| {
            p.extension().is_some_and(|x| x == "list" || x == "sources")
                || p.ends_with("sources.list")
        })
        .filter_map(|p| fs::read_to_string(p).ok())
        .find_map(|text| bookworm_uri(&text))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The URI of an entry with suite `bookworm` in one sources file (either format).
pub fn bookworm_uri(text: &str) -> Option<String> {
    // One-line format: deb [options] URI SUITE COMPONENTS...
    for l in text.lines().map(str::trim) {
        let Some(rest) = l.strip_prefix("deb ") else {
            continue;
        };
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(r) => r.split_once(']').map(|(_, r)| r).unwrap_or(""),
            None => rest,
        };
        let mut w = rest.split_whitespace();
        if let (Some(uri), Some("bookworm")) = (w.next(), w.next()) {
            return Some(uri.to_string());
        }
    }
    // deb822: stanzas separated by blank lines, with Types, URIs, Suites.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim).map(str::to_string))
        };
        let is_deb = field("Types:").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let bookworm =
            field("Suites:").is_some_and(|s| s.split_whitespace().any(|s| s == "bookworm"));
        if is_deb && bookworm {
            if let Some(uri) =
                field("URIs:").and_then(|u| u.split_whitespace().next().map(Into::into))
            {
                return Some(uri);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_image_of_a_series_and_flavour() {
        let names = "linux-image-6.1.0-9-amd64-unsigned\nlinux-image-6.1.0-56-amd64-unsigned\n\
                     linux-image-6.1.0-56-cloud-amd64-unsigned\nlinux-image-6.1.0-56-rt-amd64-unsigned\n\
                     linux-image-6.1.0-9-rt-amd64-unsigned\n\
                     linux-image-6.12.117+deb12-amd64-unsigned\nlinux-image-6.12.9+deb12-amd64-unsigned\n\
                     linux-image-6.1.0-56-amd64-dbg\n";
        assert_eq!(
            newest_package("6.1", false, names).as_deref(),
            Some("linux-image-6.1.0-56-amd64-unsigned")
        );
        assert_eq!(
            newest_package("6.1", true, names).as_deref(),
            Some("linux-image-6.1.0-56-rt-amd64-unsigned")
        );
        assert_eq!(
            newest_package("6.12", false, names).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(newest_package("5.10", false, names), None);
        assert_eq!(
            Entry::parse("6.1-rt"),
            Entry::Series {
                series: "6.1".into(),
                rt: true
            }
        );
        assert_eq!(
            Entry::parse("linux-image-5.10.0-32-amd64-unsigned").pick(
                "linux-image-5.10.0-32-amd64-unsigned\nlinux-image-5.10.0-30-amd64-unsigned\n"
            ),
            Some("linux-image-5.10.0-32-amd64-unsigned".into())
        );
    }

    #[test]
    fn the_private_configuration_stays_under_its_directory() {
        let conf = private_conf(Path::new("/c/apt/bullseye"));
        for want in [
            "Dir::Etc::SourceList \"/c/apt/bullseye/sources.list\";",
            "Dir::Etc::SourceParts \"/dev/null\";",
            "Dir::State::Lists \"/c/apt/bullseye/lists\";",
            "Dir::Cache \"/c/apt/bullseye/cache\";",
            "#clear APT::Update::Post-Invoke-Success;",
        ] {
            assert!(conf.contains(want), "{want} in {conf}");
        }
    }

    #[test]
    fn finds_the_bookworm_uri_in_either_sources_format() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            bookworm_uri(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let list = "# deb http://old/ bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://proxy:3142/debian bookworm main contrib\n";
        assert_eq!(
            bookworm_uri(list).as_deref(),
            Some("http://proxy:3142/debian")
        );
        assert_eq!(bookworm_uri("deb http://x/ trixie main\n"), None);
    }
}
