#!/bin/sh
# One of the two machines of `cargo xtask field` (started by scripts/vm/init in a qemu
# guest, chrooted into the host's root, read-only with a tmpfs overlay). The two guests
# share nothing but a virtio-net link (qemu socket netdevs over the host's loopback)
# and the host directory mounted at /results, where the host wrote the plan (one case
# a line: "ID<TAB>CASE") and where each case leaves its files in /results/ID/.
#
# The role comes from the kernel command line (st_role=node|prober). The node is the
# machine under suspicion: it runs stalltrace with default flags and plants the stall
# (a SCHED_FIFO task with a random name on the RX CPU). The prober is another machine
# with its own kernel and clock: it runs hping3/ping/Prometheus at the node. The two
# step through each case together by files in /results/ID/ (ready, go, done), never
# by clocks.
R=/results
. "$R/env"
tab=$(printf '\t')
role=
for w in $(cat /proc/cmdline); do
  case "$w" in st_role=*) role="${w#st_role=}" ;; esac
done
NODE4=10.199.0.2
PROBER4=10.199.0.1
NODE6=fd99::2
PROBER6=fd99::1
# The RX CPU: the NIC's interrupt, RPS and the planted task all on it.
RXCPU=1
ST="$STALLTRACE_BIN"

log() { echo "guest[$role]: $*"; }

# wait_file PATH SECONDS: 0 once PATH exists, 1 after SECONDS.
wait_file() {
  n=0
  while [ ! -e "$1" ]; do
    n=$((n + 1))
    [ "$n" -gt $(($2 * 10)) ] && return 1
    sleep 0.1
  done
  return 0
}

net_up() {
  ip link set lo up
  ip link set eth0 up || return 1
  if [ "$role" = node ]; then a4=$NODE4; a6=$NODE6; else a4=$PROBER4; a6=$PROBER6; fi
  ip addr add "$a4/24" dev eth0
  ip -6 addr add "$a6/64" dev eth0 nodad
  # The link is up once the other side answers.
  if [ "$role" = node ]; then peer=$PROBER4; else peer=$NODE4; fi
  n=0
  until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
    n=$((n + 1))
    [ "$n" -gt 120 ] && return 1
  done
  return 0
}

# The NIC's RX interrupt line(s) in /proc/interrupts (virtioN-input.Q).
rx_irqs() {
  grep -E 'virtio[0-9]+-input' /proc/interrupts | sed 's/^ *\([0-9]*\):.*/\1/'
}

# The node's receive path on one CPU (the blog post's "RSS hashed every probe to one
# queue, so one CPU"): the NIC's interrupt there, RPS (rps_on) for the backlog;
# threaded NAPI and RPS off until a case asks.
steer_rx() {
  mask=$((1 << RXCPU))
  for irq in $(rx_irqs); do echo "$mask" > "/proc/irq/$irq/smp_affinity" 2>/dev/null; done
  for q in /sys/class/net/eth0/queues/rx-*; do echo 0 > "$q/rps_cpus"; done
  [ -e /sys/class/net/eth0/threaded ] && echo 0 > /sys/class/net/eth0/threaded
  return 0
}

rps_on() {
  for q in /sys/class/net/eth0/queues/rx-*; do echo "$((1 << RXCPU))" > "$q/rps_cpus"; done
}

# Threaded NAPI on the NIC, its kthreads pinned to the RX CPU.
napi_threads_on() {
  [ -e /sys/class/net/eth0/threaded ] || return 1
  echo 1 > /sys/class/net/eth0/threaded || return 1
  sleep 0.2
  for p in $(pids_named 'napi/eth0-'); do taskset -pc "$RXCPU" "$p" >/dev/null; done
  return 0
}

# Pids of tasks whose name starts with $1 (kernel threads included), from /proc.
pids_named() {
  for pd in /proc/[0-9]*; do
    read -r c < "$pd/comm" 2>/dev/null || continue
    case "$c" in "$1"*) echo "${pd#/proc/}" ;; esac
  done
}

# The planted culprit: a busy loop at SCHED_FIFO 50 on the RX CPU for $1 seconds, as
# a copy of dash under a random name stalltrace has never seen. It writes its own pid
# (getpid) first; that pid's /proc/PID/comm must then read its name. Pid and name go to
# $2.
plant_hog() {
  name="$(tr -dc 'a-z' </dev/urandom | head -c 9)d"
  cp /bin/dash "/tmp/$name"
  rm -f /tmp/hog.pid
  # timeout outside the class and the CPU: a SCHED_FIFO timeout pinned beside its child
  # would never run to end it.
  timeout "$1" chrt -f 50 taskset -c "$RXCPU" "/tmp/$name" -c 'echo $$ > /tmp/hog.pid; while :; do :; done' &
  hog_parent=$!
  pid=
  n=0
  while [ -z "$pid" ] && [ "$n" -lt 100 ]; do
    read -r pid < /tmp/hog.pid 2>/dev/null
    n=$((n + 1))
    [ -z "$pid" ] && sleep 0.1
  done
  read -r comm < "/proc/$pid/comm" 2>/dev/null
  if [ "$comm" != "$name" ]; then
    log "the planted task's /proc/$pid/comm is '$comm', not $name"
    pid=
  fi
  hog_name=$name
  printf '%s\t%s\n' "$pid" "$name" > "$2"
  log "planted $name (pid $pid) at SCHED_FIFO 50 on CPU $RXCPU for $1 s"
}

# Facts the host judges by, before and after (facts WHEN DIR): the kernel's own counters.
facts() {
  {
    echo "## $1"
    cat /proc/net/snmp
    grep -E '^Icmp6(InEchos|InEchoReplies|InMsgs) ' /proc/net/snmp6
    echo "eth0_rx_packets $(cat /sys/class/net/eth0/statistics/rx_packets)"
    echo "eth0_rx_dropped $(cat /sys/class/net/eth0/statistics/rx_dropped)"
    grep -E 'virtio[0-9]+-input|NET_RX' /proc/interrupts /proc/softirqs 2>/dev/null
    for n in "ksoftirqd/$RXCPU" 'napi/eth0-'; do
      for p in $(pids_named "$n"); do echo "task $p $(cat /proc/$p/comm)"; done
    done
  } >> "$2/facts-$1.txt"
}

# record_start DIR ARGS...: stalltrace with the given flags (default flags otherwise)
# in the background, until SIGINT; returns once the dump exists (it is created only
# after every program attached).
record_start() {
  d=$1
  shift
  ftrace_start
  "$ST" record -o "$d/node.jsonl" --duration 120s "$@" > "$d/record.out" 2> "$d/record.err" &
  rec=$!
  echo "$rec" > "$d/record.pid"
  if ! wait_file "$d/node.jsonl" 60; then
    log "stalltrace record did not start: $(tail -n 3 "$d/record.err")"
    return 1
  fi
  return 0
}

# With STALLTRACE_FIELD_FTRACE=1 on the host: the kernel's own trace of the RX CPU's
# scheduler events (switches, wakeups) on the monotonic clock stalltrace uses, kept
# beside the dump as ftrace.txt: an oracle for a wait the recording did not see.
T=/sys/kernel/tracing
ftrace_start() {
  [ "${ST_FTRACE:-0}" = 1 ] || return 0
  [ -e "$T/trace" ] || mount -t tracefs nodev "$T" 2>/dev/null || return 0
  echo 0 > "$T/tracing_on"
  echo mono > "$T/trace_clock"
  echo 16384 > "$T/buffer_size_kb"
  echo > "$T/trace"
  # Wakeups of RX threads from any CPU; every switch (who held the CPU).
  for e in sched/sched_wakeup sched/sched_waking; do
    echo 'comm ~ "napi*" || comm ~ "ksoftirqd*"' > "$T/events/$e/filter"
    echo 1 > "$T/events/$e/enable"
  done
  echo 1 > "$T/events/sched/sched_switch/enable"
  echo 1 > "$T/tracing_on"
}

ftrace_stop() {
  [ "${ST_FTRACE:-0}" = 1 ] && [ -e "$T/trace" ] || return 0
  echo 0 > "$T/tracing_on"
  cat "$T/trace" > "$1/ftrace.txt"
  echo 0 > "$T/events/enable"
}

record_stop() {
  ftrace_stop "$1"
  # The programs' run counts and recursion misses (a program the kernel skipped because
  # it was already running on that CPU), for a case whose waits went unseen.
  bpftool prog show --json > "$1/progs.json" 2>/dev/null || true
  # The RX-thread bookkeeping as it stood: pending wakeups by pid, and each CPU's marks
  # against unmarks (a wait that went unseen leaves its trace in one or the other).
  for m in RX_WAKE RX_PENDING; do
    bpftool map dump name "$m" --json > "$1/map-$m.json" 2>/dev/null || true
  done
  kill -INT "$rec" 2>/dev/null
  wait "$rec"
  echo "$?" > "$1/record.rc"
}

tcp_listen() {
  python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(4096)
s.settimeout(0.5)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        c, _ = s.accept()
        c.close()
    except OSError:
        pass
' "$1" "$2" &
}

# ---- the node -------------------------------------------------------------------

node_case() {
  id=$1
  kind=$2
  d="$R/$id"
  mkdir -p "$d"
  steer_rx
  case "$kind" in
    seed-ksoftirqd | seed-napi | hping3-syn | probe-cmd)
      # How RX reaches the starved CPU: ksoftirqd (RPS, woken by a burst) or a threaded
      # NAPI kthread.
      mode=ksoftirqd
      if [ "$kind" != seed-ksoftirqd ]; then
        # hping3-syn and probe-cmd take threaded NAPI where the kernel has it (5.12+).
        if napi_threads_on; then
          mode=napi
        elif [ "$kind" = seed-napi ]; then
          echo "no threaded NAPI on $(uname -r)" > "$d/skip"
          touch "$d/ready" "$d/done"
          return
        fi
      fi
      [ "$mode" = ksoftirqd ] && rps_on
      echo "$mode" > "$d/mode"
      port=
      [ "$kind" = hping3-syn ] && port="--tcp-port 9876"
      facts before "$d"
      # shellcheck disable=SC2086
      record_start "$d" --peer "$PROBER4" $port || { touch "$d/ready" "$d/done"; return; }
      touch "$d/ready"
      wait_file "$d/probing" 60
      sleep 1
      plant_hog 1.6 "$d/hog"
      touch "$d/hog-started"
      wait "$hog_parent"
      touch "$d/hog-ended"
      wait_file "$d/prober-done" 120
      sleep 1
      record_stop "$d"
      facts after "$d"
      ;;
    probe-icmp | probe-tcp-open | probe-tcp-closed | probe-icmp6)
      napi_threads_on
      case "$kind" in
        probe-icmp) target=$PROBER4; extra= ;;
        probe-icmp6) target=$PROBER6; extra= ;;
        probe-tcp-open) target=$PROBER4; extra="--tcp 8080" ;;
        probe-tcp-closed) target=$PROBER4; extra="--tcp 8081" ;;
      esac
      touch "$d/ready"
      wait_file "$d/listening" 60
      facts before "$d"
      # shellcheck disable=SC2086
      record_start "$d" --probe "$target" $extra || { touch "$d/done"; return; }
      sleep 2
      plant_hog 1.6 "$d/hog"
      wait "$hog_parent"
      sleep 3
      record_stop "$d"
      facts after "$d"
      ;;
    peer-icmp6)
      facts before "$d"
      record_start "$d" --peer "$PROBER6" || { touch "$d/ready" "$d/done"; return; }
      touch "$d/ready"
      # Replies come to the node when it pings.
      ping -6 -i 0.01 -c 100 "$PROBER6" > "$d/node-ping6.log" 2>&1
      wait_file "$d/prober-done" 120
      sleep 1
      record_stop "$d"
      facts after "$d"
      ;;
    watch)
      # Threaded NAPI where the kernel has it, else ksoftirqd woken by the prober's burst.
      if napi_threads_on; then echo napi > "$d/mode"; else rps_on; echo ksoftirqd > "$d/mode"; fi
      "$ST" watch --listen "$NODE4:9910" > "$d/watch.out" 2> "$d/watch.err" &
      w=$!
      n=0
      until grep -q '^watching' "$d/watch.err" 2>/dev/null || [ "$n" -gt 600 ]; do n=$((n + 1)); sleep 0.1; done
      touch "$d/ready"
      wait_file "$d/scraping" 120
      sleep 2
      plant_hog 1.6 "$d/hog"
      touch "$d/hog-started"
      wait "$hog_parent"
      touch "$d/hog-ended"
      wait_file "$d/prober-done" 180
      kill -TERM "$w"
      wait "$w"
      echo "$?" > "$d/watch.rc"
      ;;
    *)
      echo "unknown case $kind" > "$d/skip"
      touch "$d/ready"
      ;;
  esac
  [ -e /sys/class/net/eth0/threaded ] && echo 0 > /sys/class/net/eth0/threaded
  [ -n "${hog_name:-}" ] && rm -f "/tmp/$hog_name"
  hog_name=
  touch "$d/done"
}

# ---- the prober -----------------------------------------------------------------

prober_case() {
  id=$1
  kind=$2
  d="$R/$id"
  mkdir -p "$d"
  case "$kind" in
    probe-tcp-open) tcp_listen 8080 40; touch "$d/listening" ;;
    probe-icmp | probe-icmp6 | probe-tcp-closed) touch "$d/listening" ;;
  esac
  if ! wait_file "$d/ready" 120; then
    log "$id: the node never got ready"
    touch "$d/prober-done"
    return
  fi
  [ -e "$d/skip" ] && { touch "$d/prober-done"; return; }
  case "$kind" in
    seed-ksoftirqd | seed-napi)
      # The 2019 GitHub incident's two probers at once: hping3 --icmp (its id and sequence in host
      # order) and ping -D, 10 ms apart each, for 5 s.
      hping3 --icmp -i u10000 -c 500 "$NODE4" > "$d/hping3.log" 2> "$d/hping3.err" &
      h=$!
      ping -D -i 0.01 -c 500 "$NODE4" > "$d/ping.log" 2> "$d/ping.err" &
      p=$!
      touch "$d/probing"
      if [ "$kind" = seed-ksoftirqd ]; then
        # A burst that overruns NET_RX's budget on the node (10 restarts or 2 ms) and
        # wakes ksoftirqd there, while the planted task holds that CPU. Short: a longer
        # flood keeps an emulated node busy for seconds, stalling probes by itself.
        wait_file "$d/hog-started" 30
        hping3 --icmp -i u50 -c 400 -q "$NODE4" > "$d/flood.log" 2>&1
      fi
      wait "$h"
      wait "$p"
      ;;
    hping3-syn)
      hping3 -S -p 9876 -i u10000 -c 500 "$NODE4" > "$d/hping3.log" 2> "$d/hping3.err" &
      h=$!
      touch "$d/probing"
      if [ "$(cat "$d/mode")" = ksoftirqd ]; then
        wait_file "$d/hog-started" 30
        hping3 --icmp -i u50 -c 400 -q "$NODE4" > "$d/flood.log" 2>&1
      fi
      wait "$h"
      ;;
    probe-cmd)
      # stalltrace's own prober, default flags but the count, from the other machine.
      "$ST" probe "$NODE4" -c 500 > "$d/probe.log" 2> "$d/probe.err" &
      h=$!
      touch "$d/probing"
      if [ "$(cat "$d/mode")" = ksoftirqd ]; then
        wait_file "$d/hog-started" 30
        hping3 --icmp -i u50 -c 400 -q "$NODE4" > "$d/flood.log" 2>&1
      fi
      wait "$h"
      ;;
    peer-icmp6)
      ping -6 -i 0.01 -c 300 "$NODE6" > "$d/ping6.log" 2> "$d/ping6.err"
      ;;
    probe-icmp | probe-icmp6 | probe-tcp-open | probe-tcp-closed)
      wait_file "$d/done" 120
      ;;
    watch)
      cat > "/tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: stalltrace
    static_configs:
      - targets: ['$NODE4:9910']
EOF
      prometheus --config.file=/tmp/prometheus.yml --storage.tsdb.path=/tmp/prom \
        --web.listen-address=127.0.0.1:9090 > "$d/prometheus.log" 2>&1 &
      pr=$!
      # Scraping once Prometheus has the node's target up.
      n=0
      until curl -s --data-urlencode 'query=up' 'http://127.0.0.1:9090/api/v1/query' 2>/dev/null \
        | grep -q '"value":\[[0-9.]*,"1"\]' || [ "$n" -gt 120 ]; do
        n=$((n + 1))
        sleep 0.5
      done
      touch "$d/scraping"
      # Traffic while the culprit holds the RX CPU, as a busy node has: a scrape a
      # second alone can fall in the gaps real-time throttling leaves, and then no RX
      # thread waits behind the culprit at all.
      wait_file "$d/hog-started" 30
      if [ "$(cat "$d/mode")" = ksoftirqd ]; then
        hping3 --icmp -i u50 -c 400 -q "$NODE4" > "$d/flood.log" 2>&1
      else
        ping -q -i 0.01 -c 150 -W 3 "$NODE4" > "$d/ping.log" 2>&1
      fi
      wait_file "$d/hog-ended" 120
      # Episodes close a second after their wait; scrapes come every second.
      sleep 8
      curl -s 'http://127.0.0.1:9090/api/v1/targets' > "$d/targets.json"
      curl -s --data-urlencode 'query=stalltrace_stall_episodes_total' \
        'http://127.0.0.1:9090/api/v1/query' > "$d/query.json"
      kill "$pr"
      wait "$pr"
      ;;
  esac
  touch "$d/prober-done"
}

log "$(uname -r), $(nproc) CPUs"
if ! net_up; then
  log "FATAL: the link to the other machine never came up"
  echo "STALLTRACE-FIELD-NOLINK"
  exit 1
fi
log "link up"
while IFS="$tab" read -r id kind; do
  [ -n "$id" ] || continue
  echo "STALLTRACE-CASE-START $id"
  if [ "$role" = node ]; then node_case "$id" "$kind"; else prober_case "$id" "$kind"; fi
  sync
  echo "STALLTRACE-CASE-END $id"
  # The two guests start each case together.
  wait_file "$R/$id/done" 180
  wait_file "$R/$id/prober-done" 180
done < "$R/plan"
