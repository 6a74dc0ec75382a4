#!/usr/bin/env bash
# Idempotent set-up of everything stalltrace needs to build and test on a fresh
# Debian 12 machine: Debian packages, nightly's rust-src, and a bpf-linker linked
# against nightly's own libLLVM (no matching LLVM package exists in Debian 12).
# Quick when already done. With --vm, also installs qemu, busybox-static and cpio
# for `cargo xtask vmtest`. Prints the bpf-linker directory to add to PATH on its
# last line of stdout ("BPF_LINKER_DIR=...").
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages used by the tests, the lab and the benchmarks -----------------
pkgs=(iproute2 ethtool hping3 iputils-ping bpftool bpftrace util-linux procps kmod prometheus linux-perf iptables)
# cargo xtask bench: GNU time for analyze's peak RSS (bpftrace, bpftool, perf and hping3
# above are its peers and tools).
pkgs+=(time)
# The node agent's image and its test (cargo xtask image, tests/tests/it/deploy.rs):
# buildah builds it from scratch, podman runs it with runc (crun refuses the hybrid
# cgroup layout of these machines), python3-venv holds kubernetes-validate (PyPI).
pkgs+=(podman buildah runc python3-venv)
# --vm: also what `cargo xtask vmtest` needs to boot other kernels under qemu.
if [ "${1:-}" = "--vm" ]; then
  pkgs+=(qemu-system-x86 busybox-static cpio xz-utils)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- nightly with rust-src (build-std=core for bpfel-unknown-none) -----------------
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal >&2
fi
sysroot=$(rustc +nightly --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly >&2
fi
# clippy for nightly: `cargo xtask lint` runs it over tracer-ebpf for the BPF target.
if ! rustup run nightly cargo clippy --version >/dev/null 2>&1; then
  log "adding clippy to nightly"
  rustup component add clippy --toolchain nightly >&2
fi

# --- bpf-linker against nightly's libLLVM -------------------------------------------
llvm_major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || { log "cannot read nightly's LLVM version from 'rustc +nightly -vV'"; exit 1; }
nightly_id=$(rustc +nightly -vV | sed -n 's/^commit-hash: //p' | cut -c1-12)
tools="${STALLTRACE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/stalltrace}"
root="$tools/bpf-linker-llvm${llvm_major}-${nightly_id}"
if [ ! -x "$root/bin/bpf-linker" ]; then
  log "building bpf-linker against nightly's LLVM ${llvm_major} into $root (about 1-3 minutes)"
  llvmlib=$(ls "$sysroot"/lib/libLLVM.so."${llvm_major}"* 2>/dev/null | head -n1 || true)
  [ -n "$llvmlib" ] || llvmlib=$(ls "$sysroot"/lib/libLLVM-"${llvm_major}"*.so 2>/dev/null | head -n1 || true)
  [ -n "$llvmlib" ] || { log "no libLLVM in $sysroot/lib"; exit 1; }
  mkdir -p "$root/llvm/lib"
  ln -sf "$llvmlib" "$root/llvm/lib/libLLVM.so"
  LLVM_PREFIX="$root/llvm" RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib" \
    cargo +stable install bpf-linker --locked --no-default-features \
      --features "llvm-${llvm_major}" --root "$root" >&2
fi
# --- kubernetes-validate (PyPI, pinned in deploy/requirements-validate.txt) in a venv --
# The deploy test validates deploy/daemonset.yaml offline against the Kubernetes schemas
# this package ships; it looks for the venv here (or $KUBERNETES_VALIDATE).
reqs="$(cd "$(dirname "$0")/.." && pwd)/deploy/requirements-validate.txt"
kv_version=$(sed -n 's/^kubernetes-validate==//p' "$reqs")
kv="$tools/kubernetes-validate-$kv_version"
if [ ! -x "$kv/bin/kubernetes-validate" ]; then
  log "installing kubernetes-validate $kv_version into $kv"
  rm -rf "$kv"
  python3 -m venv "$kv" >&2
  "$kv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" >&2
fi
echo "BPF_LINKER_DIR=$root/bin"
