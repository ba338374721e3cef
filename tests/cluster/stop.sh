#!/usr/bin/env bash
# Stop the cluster that tests/cluster/start.sh started. Idempotent; safe after a failed or partial start.
# Only daemons with a "<daemon>.started" marker in /run/transferable-slurm are stopped (a munged that was
# already running is left alone), each by the pid in its pid file after checking /proc/PID/comm:
# running jobs are cancelled first, then slurmd, slurmctld, munged (SIGTERM, SIGKILL after 20 s).
#
#   tests/cluster/stop.sh            # stop; keep job state and logs
#   tests/cluster/stop.sh --purge    # also delete job state, logs and our /etc/slurm/{slurm,gres}.conf
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

PURGE=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "stop.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "stop.sh: must run as root" >&2; exit 1; }

say() { echo "[cluster/stop] $*" >&2; }


# stop NAME PIDFILE: only if this harness started it
stop() {
  local name=$1 pidfile=$2 pid i
  [[ -f $RUN/$name.started ]] || return 0
  if is_running "$pidfile" "$name"; then
    pid=$(<"$pidfile")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
      is_running "$pidfile" "$name" || break
      sleep 0.2
    done
    if is_running "$pidfile" "$name"; then
      say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      sleep 0.5
    fi
  fi
  rm -f "$pidfile" "$RUN/$name.started"
}

# Cancel the cluster's jobs while slurmctld still runs, so no job process outlives slurmd.
if [[ -f $RUN/slurmctld.started ]] && is_running "$RUN/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -t PD,R,CG,S,CF -o %i 2>/dev/null | tr '\n' ' ')
  if [[ -n ${jobs// /} ]]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for ((i = 0; i < 75; i++)); do
      [[ -z $(squeue -h -t R,CG -o %i 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
fi

stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop munged /run/munge/munged.pid

if (( PURGE )); then
  rm -rf "$STATE" "$LOGS"
  if [[ -f $ETC/slurm.conf && $(head -n 1 "$ETC/slurm.conf") == "$MARK"* ]]; then
    rm -f "$ETC/slurm.conf" "$ETC/gres.conf"
  fi
  say "state, logs and configuration deleted"
fi
say "stopped"
exit 0
