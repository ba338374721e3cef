#!/usr/bin/env bash
# Start the project's one-node Slurm cluster on 127.0.0.1 (Debian bookworm, Slurm 22.05, no systemd), for
# tests/test_slurm.py and for trying profiles/slurm by hand. Run as root. Idempotent: a daemon this script
# already started (its pid file names a live process of that name) is left running.
#
#   tests/cluster/start.sh            # install what is missing, configure, start, wait for an idle node
#   tests/cluster/start.sh --fresh    # first wipe the cluster's job state (job ids restart at 1)
#   sinfo; sbatch --gpus=1 --wrap 'echo $CUDA_VISIBLE_DEVICES'
#   tests/cluster/stop.sh [--purge]   # stop what this script started
#
# The cluster: node "localhost", 2 CPUs, 16000 MB, 2 fake GPUs (gres/gpu), partition "debug", no
# accounting (poll with squeue), ports 6917/6918 (not Slurm's defaults, so a Slurm already on this machine
# keeps running). Configuration: tests/cluster/slurm.conf and gres.conf, installed to /etc/slurm/ (the
# only path the nested srun inside jobs reads, see slurm.conf); the script refuses to replace an
# /etc/slurm/slurm.conf that is not its own. Takes < 1 s once installed; the apt-get install of
# slurmctld slurmd slurm-client munge takes 10-30 s the first time.
#
# On failure it prints the last daemon log lines and exits non-zero, leaving what it started running:
# callers run stop.sh in a finally/trap.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

FRESH=0
for arg in "$@"; do
  case "$arg" in
    --fresh) FRESH=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "start.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[[ $(uname -s) == Linux ]] || { echo "start.sh: Linux only" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "start.sh: must run as root" >&2; exit 1; }

T0=$(date +%s%N)
say() {
  local ms=$(( ($(date +%s%N) - T0) / 1000000 ))
  printf '[cluster/start %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*" >&2
}


# poll SECONDS WHAT CMD...: run CMD every 0.2 s until it succeeds
poll() {
  local deadline=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || { say "timed out waiting for $what"; return 1; }
    sleep 0.2
  done
}

dump_logs() {
  say "FAILED at line $1; last daemon log lines:"
  for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
    [[ -f $f ]] && { echo "---- $f" >&2; tail -n 20 "$f" >&2; }
  done
}
trap 'dump_logs $LINENO' ERR

# 1. packages ---------------------------------------------------------------------------------------------
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if (( ${#missing[@]} )); then
  command -v apt-get >/dev/null || { say "missing ${missing[*]} and no apt-get"; exit 1; }
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  apt_install || { apt-get update -qq && apt_install; }
fi
say "packages ok ($(slurmctld -V))"

# 2. configuration, directories, fake GPUs ----------------------------------------------------------------
install -d -m 755 "$ETC" "$RUN"
if [[ -e $ETC/slurm.conf ]] && [[ $(head -n 1 "$ETC/slurm.conf") != "$MARK"* ]]; then
  say "$ETC/slurm.conf exists and is not this harness's (first line is not '$MARK'): refusing to replace it"
  exit 1
fi
install -m 644 "$HERE/slurm.conf" "$ETC/slurm.conf"
install -m 644 "$HERE/gres.conf" "$ETC/gres.conf"
for i in 0 1; do [[ -c /dev/fakegpu$i ]] || mknod -m 666 "/dev/fakegpu$i" c 1 3; done
install -d -o slurm -g slurm -m 755 "$STATE" "$STATE/slurmctld" "$LOGS"
install -d -m 755 "$STATE/slurmd"
install -d -o munge -g munge -m 755 /run/munge

if (( FRESH )); then
  if is_running "$RUN/slurmctld.pid" slurmctld; then
    say "--fresh ignored: slurmctld is running (run stop.sh first)"
  else
    rm -rf "${STATE:?}/slurmctld/"* "${STATE:?}/slurmd/"*
    say "job state wiped"
  fi
fi

# 3. munge: reuse a working munged (e.g. the system's), else start one and remember that we did ------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
  runuser -u munge -- /usr/sbin/munged --force      # daemonizes, writes /run/munge/munged.pid
  touch "$RUN/munged.started"
  poll 10 munged bash -c 'munge -n | unmunge'
fi
say "munge ok"

# 4. slurmctld ----------------------------------------------------------------------------------------------
if ! is_running "$RUN/slurmctld.pid" slurmctld; then
  rm -f "$RUN/slurmctld.pid"
  /usr/sbin/slurmctld -f "$SLURM_CONF"      # daemonizes, writes $RUN/slurmctld.pid, runs as user slurm
  touch "$RUN/slurmctld.started"
fi
poll 30 slurmctld bash -c 'scontrol ping | grep -q "is UP"'
say "slurmctld up (pid $(<"$RUN/slurmctld.pid"))"

# 5. slurmd -------------------------------------------------------------------------------------------------
if ! is_running "$RUN/slurmd.pid" slurmd; then
  rm -f "$RUN/slurmd.pid"
  /usr/sbin/slurmd -f "$SLURM_CONF" -N localhost   # -N: node "localhost" whatever `hostname` says
  touch "$RUN/slurmd.started"
fi
poll 30 "node registration" bash -c '[[ -n $(sinfo -h -n localhost -o %t) && $(sinfo -h -n localhost -o %t) != *"*" ]]'
state=$(sinfo -h -n localhost -o %t)
case "$state" in
  inval*) say "node INVALID: $(sinfo -h -n localhost -o %E) (fix slurm.conf/gres.conf, then start.sh --fresh)"; false ;;
  drain* | drng* | down* | fail*)
    say "node $state ($(sinfo -h -n localhost -o %E)): resuming"    # a DRAIN reason survives restarts
    scontrol update nodename=localhost state=resume ;;
esac
poll 30 "an idle node" bash -c 'sinfo -h -n localhost -o %t | grep -Eq "^(idle|mix|alloc)$"'
say "ready: $(sinfo -h -n localhost -o 'node %N %t cpus=%c mem=%m gres=%G partition=%P')"
