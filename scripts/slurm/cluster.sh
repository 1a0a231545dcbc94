#!/usr/bin/env bash
# A throw-away one-node Slurm cluster whose whole state lives in one directory.
#
#   scripts/slurm/cluster.sh start DIR   start munged, slurmctld and slurmd; wait for the node idle
#   scripts/slurm/cluster.sh env DIR     print `export SLURM_CONF=...` (eval it to use the cluster)
#   scripts/slurm/cluster.sh stop DIR    cancel its jobs, stop the daemons, remove DIR
#
# Needs root and the Debian packages slurm-wlm and munge (scripts/install-system-deps.sh).
# The node declares the real CPUs and memory (`slurmd -C`); there are no GRES, so GPU options
# (--gpus-per-task) can be submitted only to a real GPU cluster.
# Settings (environment): BOXMASK_SLURM_MAX_ARRAY_SIZE (9), BOXMASK_SLURM_PARTITION (debug),
# BOXMASK_SLURM_CTLD_PORT / BOXMASK_SLURM_SLURMD_PORT (default: free ports), and
# BOXMASK_SLURM_START_TIMEOUT (30 s).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() { die "usage: cluster.sh start|stop|env DIR"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  # A port nothing listens on, in a range away from Slurm's defaults (6817/6818).
  local port tries
  for tries in $(seq 1 50); do
    port=$((20000 + RANDOM % 20000))
    if ! port_in_use "$port"; then echo "$port"; return 0; fi
  done
  die "no free TCP port found"
}

log_tail() {
  local f
  for f in "$1"/log/*.log; do
    [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }
  done >&2
}

fail_start() {
  # Show the daemons' logs, undo the half-started cluster in $1, and fail with message $2.
  log_tail "$1"
  stop "$1" >/dev/null 2>&1 || true
  die "$2"
}

start() {
  local dir="$1"
  for cmd in munged slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (install slurm-wlm and munge)"
  done
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd launches jobs as their user)"
  [ ! -e "$dir/etc/slurm.conf" ] || die "$dir already holds a cluster; stop it first"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  # munged wants the key private and the socket's directory searchable by all, and refuses
  # group/world-writable directories on the way to either.
  chmod 0755 "$dir"
  mkdir -p "$dir"/{etc,munge,state,spool,run,log}
  chmod 0700 "$dir/munge"
  chmod 0755 "$dir/run"
  local socket="$dir/run/munge.socket"
  [ "${#socket}" -lt 100 ] || die "path too long for a unix socket: $socket"

  # munge: a fresh key, and a daemon that owns nothing outside DIR.
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$dir/munge/munge.key"
  munged --key-file="$dir/munge/munge.key" --socket="$socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" \
    || fail_start "$dir" "munged did not start"

  local node hw ctld_port slurmd_port
  node="$(hostname -s)"
  # `slurmd -C` prints "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105": keep the hardware.
  hw="$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')"
  ctld_port="${BOXMASK_SLURM_CTLD_PORT:-$(free_port)}"
  slurmd_port="${BOXMASK_SLURM_SLURMD_PORT:-$(free_port)}"
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port="$(free_port)"; done
  sed -e "s|@DIR@|$dir|g" \
      -e "s|@CTLD_PORT@|$ctld_port|g" \
      -e "s|@SLURMD_PORT@|$slurmd_port|g" \
      -e "s|@USER@|$(id -un)|g" \
      -e "s|@MAX_ARRAY_SIZE@|${BOXMASK_SLURM_MAX_ARRAY_SIZE:-9}|g" \
      -e "s|@DEF_MEM_PER_CPU@|256|g" \
      -e "s|@PARTITION@|${BOXMASK_SLURM_PARTITION:-debug}|g" \
      -e "s|@NODE@|$node|g" \
      -e "s|@NODE_HW@|$hw|g" \
      "$here/slurm.conf.in" > "$dir/etc/slurm.conf"
  : > "$dir/etc/plugstack.conf"
  export SLURM_CONF="$dir/etc/slurm.conf"

  # -c: a clean start (no saved jobs); -i: ignore stale state from an earlier run of this DIR.
  slurmctld -c -i -f "$SLURM_CONF" || fail_start "$dir" "slurmctld did not start"
  slurmd -N "$node" -f "$SLURM_CONF" || fail_start "$dir" "slurmd did not start"

  local deadline=$((SECONDS + ${BOXMASK_SLURM_START_TIMEOUT:-30})) state=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    state="$(sinfo -h -n "$node" -o '%T' 2>/dev/null || true)"
    if [ "$state" = idle ]; then
      echo "slurm cluster up: SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.2
  done
  fail_start "$dir" \
    "node did not become idle within ${BOXMASK_SLURM_START_TIMEOUT:-30} s (state: '${state}')"
}

alive() {
  # Whether process $1 runs; a zombie counts as ended (our PID 1 may reap it late).
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

kill_pidfile() {
  # TERM the daemon named in pid file $1, KILL it after 1 s (its state is thrown away anyway).
  local pidfile="$1" pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 10); do
    alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

holders_of() {
  # Pids of processes holding a file open under directory $1 (e.g. a slurmstepd left behind).
  find /proc/[0-9]*/fd -lname "$1/*" 2>/dev/null | cut -d/ -f3 | sort -u
}

stop() {
  local dir="$1"
  [ -d "$dir" ] || return 0
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/etc/slurm.conf" ]; then
    export SLURM_CONF="$dir/etc/slurm.conf"
    if scancel --full --user="$(id -un)" 2>/dev/null; then
      # Let slurmd end the jobs' processes (KillWait is 2 s) before it goes away.
      local i
      for i in $(seq 1 50); do
        [ -z "$(squeue -h -t running,completing,configuring -o %i 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  kill_pidfile "$dir/run/slurmd.pid"
  kill_pidfile "$dir/run/slurmctld.pid"
  kill_pidfile "$dir/run/munged.pid"
  local pid
  for pid in $(holders_of "$dir"); do
    [ "$pid" != "$$" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}

[ $# -eq 2 ] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  env) echo "export SLURM_CONF=$(cd "$2" && pwd)/etc/slurm.conf" ;;
  *) usage ;;
esac
