# Sourced by tests/cluster/start.sh and stop.sh: the paths they must agree on, and the liveness check.
ETC=/etc/slurm
MARK="# transferable test cluster"       # first line of the slurm.conf/gres.conf this harness installs
RUN=/run/transferable-slurm              # pid files and "<daemon>.started" markers
STATE=/var/lib/transferable-slurm        # slurmctld + slurmd state
LOGS=/var/log/transferable-slurm
export SLURM_CONF=$ETC/slurm.conf        # (the default path; set so an inherited SLURM_CONF cannot mislead)

# is_running PIDFILE NAME: the pid file names a live (not zombie) process whose comm starts with NAME
is_running() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2"* ]] || return 1
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]   # PID 1 here reaps orphans late
}
