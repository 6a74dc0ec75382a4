#!/bin/sh
# Runs inside a qemu guest of `cargo xtask vmtest` (started by scripts/vm/init, chrooted
# into the host's root, read-only with a tmpfs overlay). The host wrote
# /results/env (exports) and /results/plan: one test per line, "ID<TAB>LIMIT<TAB>COMMAND".
# Each test runs with a time limit; its output goes to /results/ID.log and its exit
# status and duration to /results/results.tsv. Markers on the console let the host
# follow progress. Facts about the kernel (kprobes, BTF, fentry) go to /results/info.
R=/results
. "$R/env"
tab=$(printf '\t')

{
  echo "kernel: $(uname -r)"
  if [ -e /sys/bus/event_source/devices/kprobe ]; then echo "kprobes: yes"; else echo "kprobes: no"; fi
  if [ -e /sys/kernel/btf/vmlinux ]; then echo "btf: yes"; else echo "btf: no"; fi
  if [ "$(cat /sys/kernel/realtime 2>/dev/null)" = 1 ]; then echo "preempt_rt: yes"; else echo "preempt_rt: no"; fi
  if [ -e /sys/class/net/lo/threaded ]; then echo "threaded_napi: yes"; else echo "threaded_napi: no"; fi
  echo "rt_runtime_us: $(cat /proc/sys/kernel/sched_rt_runtime_us 2>/dev/null)"
  # fentry/fexit need the "tracing" program type; the project's host refuses it.
  bpftool feature probe kernel 2>/dev/null | grep -E "program_type (tracing|kprobe|tracepoint|lsm) " \
    | sed 's/^eBPF /bpftool: /'
  # And a real fentry program, loaded and attached: bpftrace's kfunc probe (fentry) on
  # icmp_echo (the host's bpftrace says "kfunc/kretfunc not available").
  out=$(timeout 120 bpftrace -e 'kfunc:icmp_echo { @n = count(); } interval:s:1 { exit(); }' 2>&1)
  if echo "$out" | grep -q '^Attaching'; then
    echo "fentry: bpftrace kfunc:icmp_echo attached"
  else
    echo "fentry: bpftrace kfunc:icmp_echo failed: $(echo "$out" | grep -m1 -v RLIMIT_MEMLOCK | grep -m1 ERROR)"
  fi
} > "$R/info" 2>&1
sed 's/^/STALLTRACE-INFO /' "$R/info"

while IFS="$tab" read -r id limit cmd; do
  [ -n "$id" ] || continue
  echo "STALLTRACE-TEST-START $id"
  t0=$(cut -d' ' -f1 /proc/uptime)
  timeout -k 10 "$limit" sh -c "$cmd" > "$R/$id.log" 2>&1 < /dev/null
  rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\n' "$id" "$rc" "$secs" >> "$R/results.tsv"
  sync
  echo "STALLTRACE-TEST-END $id rc=$rc ${secs}s"
done < "$R/plan"
