#!/usr/bin/env bash
# Measures what `stalltrace watch` costs when it runs as deploy/daemonset.yaml runs it:
# the image from `cargo xtask image` under podman+runc with the DaemonSet's privileges,
# args and mounts. Reads the agent's own metrics (CPU seconds, resident memory, fds)
# and its container's memory cgroup (which also holds the BPF maps on kernels >= 5.11):
#   1. idle for IDLE seconds (default 60);
#   2. during `stalltrace lab --scenario rt-hog` (a SCHED_FIFO hog stalls RX: episodes,
#      dumps, culprit series) for LAB seconds (default 20);
#   3. during an ICMP flood (hping3 --flood, pinned to CPU 0) into a namespace made here
#      for FLOOD seconds (default 20).
# Root. Run it under the machine's heavy-work lock: flock /tmp/stalltrace-heavy.lock ...
# Everything it starts or makes is removed on exit, whatever happens.
set -euo pipefail

IMAGE="${IMAGE:-localhost/stalltrace:$(target/release/stalltrace --version | awk '{print $2}')}"
BIN="${BIN:-target/release/stalltrace}"
IDLE="${IDLE:-60}" LAB="${LAB:-20}" FLOOD="${FLOOD:-20}"
PORT="${PORT:-19911}"
name="stalltrace-measure-$$"
ns="stdeploy$$"
tmp=$(mktemp -d)

cleanup() {
  podman stop -t 5 "$name" >/dev/null 2>&1 || true
  podman rm -f "$name" >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del stdp-a 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/pods" "$tmp/containers" "$tmp/dumps"
podman --runtime runc run -d --name "$name" --pid=host \
  --cap-drop=ALL --cap-add=BPF,PERFMON --security-opt seccomp=unconfined \
  --read-only --ulimit nofile=8192:8192 --ulimit nproc=8192:8192 \
  -v /sys/kernel/btf:/sys/kernel/btf:ro -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
  -v "$tmp/pods:/var/log/pods:ro" -v "$tmp/containers:/var/log/containers:ro" \
  -v "$tmp/dumps:/var/lib/stalltrace/dumps" -p "127.0.0.1:$PORT:9910" \
  "$IMAGE" watch --listen 0.0.0.0:9910 --dump-dir /var/lib/stalltrace/dumps >/dev/null

pid=$(podman inspect --format '{{.State.Pid}}' "$name")
memcg=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' "/proc/$pid/cgroup")
if [ -n "$memcg" ]; then
  mc="/sys/fs/cgroup/memory$memcg"; cur=memory.usage_in_bytes; peak=memory.max_usage_in_bytes
else
  mc="/sys/fs/cgroup$(awk -F: '$1 == 0 {print $3}' "/proc/$pid/cgroup")"; cur=memory.current; peak=memory.peak
fi

for _ in $(seq 100); do
  curl -fs -m 2 "127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
metric() { curl -fs -m 5 "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
sample() { # label seconds
  printf '%-6s %4ss  cpu %6.2f%% of one CPU  rss %5.1f MiB  fds %3s  memcg %5.1f MiB (peak %5.1f)\n' \
    "$1" "$2" "$(echo "($(metric stalltrace_process_cpu_seconds_total) - $c0) * 100 / $2" | bc -l)" \
    "$(echo "$(metric stalltrace_process_resident_memory_bytes) / 1048576" | bc -l)" \
    "$(metric stalltrace_process_open_fds)" \
    "$(echo "$(cat "$mc/$cur") / 1048576" | bc -l)" "$(echo "$(cat "$mc/$peak") / 1048576" | bc -l)"
}

sleep 5 # start-up (BTF parse, program loads) is not the steady state
c0=$(metric stalltrace_process_cpu_seconds_total)
sleep "$IDLE"
sample idle "$IDLE"

c0=$(metric stalltrace_process_cpu_seconds_total)
t0=$(date +%s)
"$BIN" lab --scenario rt-hog --duration "${LAB}s" -o "$tmp/lab.jsonl" >/dev/null 2>"$tmp/lab.err" \
  || { cat "$tmp/lab.err" >&2; exit 1; }
sample lab "$(($(date +%s) - t0))"
echo "       episodes in the agent: $(curl -fs -m 5 "127.0.0.1:$PORT/metrics" | awk '/^stalltrace_stall_episodes_total/ {s += $2} END {print s + 0}'), dumps: $(ls "$tmp/dumps" | wc -l)"

ip netns add "$ns"
ip link add stdp-a type veth peer name stdp-b
ip link set stdp-b netns "$ns"
ip addr add 10.214.77.1/24 dev stdp-a && ip link set stdp-a up
ip -n "$ns" addr add 10.214.77.2/24 dev stdp-b && ip -n "$ns" link set stdp-b up && ip -n "$ns" link set lo up
c0=$(metric stalltrace_process_cpu_seconds_total)
timeout "$FLOOD" taskset -c 0 hping3 --icmp --flood -q 10.214.77.2 >/dev/null 2>&1 || true
sample flood "$FLOOD"
echo "       packets received in the flood namespace: $(ip netns exec "$ns" cat /sys/class/net/stdp-b/statistics/rx_packets)"
echo "       lost events: $(curl -fs -m 5 "127.0.0.1:$PORT/metrics" | awk '/^stalltrace_lost_events_total/ {s += $2} END {print s + 0}')"
echo "image $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
