#!/bin/bash
# Installs (if needed) and starts a single-node Slurm on this machine, with accounting:
# munge, MariaDB, slurmdbd, slurmctld and slurmd, all on localhost, one node with the machine's
# CPUs (at most 2 are given to Slurm), one partition `debug` (the default, MaxTime 60 min).
#
#     sudo tests/slurm/start_slurm.sh          # install, configure, start; exits 0 once `sinfo` shows the node
#     sudo tests/slurm/start_slurm.sh stop     # stops the daemons it started
#
# Debian 12 or Ubuntu (apt packages slurm-wlm, slurmdbd, munge, mariadb-server), run as root,
# without systemd: the daemons are started directly. Any existing /etc/slurm/slurm.conf is kept
# aside as slurm.conf.before-petl. MaxArraySize is 4, so that a sweep of more runs is split
# into several job arrays (what a cluster's limit does). When a step fails, the script says
# which one and why on its last line (`Slurm cannot start: ...`) and exits 1.
set -u

STATE=/var/lib/petl-slurm           # logs, spool, state
CONF=/etc/slurm
DB_PASS=petl-slurm-test             # a local test database, reachable from localhost only
NODE=$(hostname -s)

fail() { echo "Slurm cannot start: $*" >&2; exit 1; }
log() { echo "[slurm] $*"; }

stop_all() {  # the daemons this script started (their pid files), each waited for
    for daemon in slurmd slurmctld slurmdbd; do
        pid_file="$STATE/$daemon.pid"
        [ -f "$pid_file" ] || continue
        pid=$(cat "$pid_file")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            log "stopped $daemon"
        fi
        rm -f "$pid_file"
    done
}

if [ "${1:-}" = "stop" ]; then
    stop_all
    exit 0
fi

[ "$(id -u)" = 0 ] || fail "run this script as root (it installs packages and starts daemons)."

# ---------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v mariadbd >/dev/null; then
    command -v apt-get >/dev/null || fail "slurm-wlm, slurmdbd, munge and mariadb-server are not installed and there is no apt-get to install them."
    log "installing slurm-wlm slurmdbd munge mariadb-server (apt-get)"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        slurm-wlm slurmdbd munge mariadb-server) > /tmp/petl-slurm-apt.log 2>&1 \
        || fail "apt-get install failed (log: /tmp/petl-slurm-apt.log): $(tail -1 /tmp/petl-slurm-apt.log)"
fi
log "$(slurmctld -V)"
mkdir -p "$STATE"/{spool/ctld,spool/d,log} /run/munge /run/mysqld
chown munge:munge /run/munge; chown mysql:mysql /run/mysqld

# ---------------------------------------------------------------- munge
if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || fail "cannot create /etc/munge/munge.key (mungekey)"; }
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
fi
munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work (munge -n | unmunge failed)"
log "munge: ok"

# ---------------------------------------------------------------- MariaDB (accounting database)
if ! mariadb-admin ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null 2>&1 \
        || fail "mariadb-install-db failed"
    (runuser -u mysql -- mariadbd --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --bind-address=127.0.0.1 > "$STATE/log/mariadb.log" 2>&1 &)
    for _ in $(seq 60); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 1; done
    mariadb-admin ping >/dev/null 2>&1 || fail "MariaDB did not start (log: $STATE/log/mariadb.log): $(tail -1 "$STATE/log/mariadb.log")"
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
    || fail "cannot create the accounting database and its user in MariaDB"
log "MariaDB: ok"

# ---------------------------------------------------------------- configuration
CPUS=$(nproc); [ "$CPUS" -gt 2 ] && CPUS=2
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
if [ -f $CONF/slurm.conf ] && ! grep -q "petl-slurm" $CONF/slurm.conf; then
    mv $CONF/slurm.conf $CONF/slurm.conf.before-petl
fi
cat > $CONF/slurm.conf <<EOF
# petl-slurm: a single-node test cluster (tests/slurm/start_slurm.sh)
ClusterName=petl
SlurmctldHost=$NODE
SlurmUser=root
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AuthType=auth/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
ReturnToService=2
MaxArraySize=4
DefMemPerCPU=1000
KillWait=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=60 State=UP
EOF
cat > $CONF/slurmdbd.conf <<EOF
# petl-slurm
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 $CONF/slurmdbd.conf
# slurmd 22.05 always loads a cgroup plugin; processes are tracked by process group here
# (ProctrackType=proctrack/pgid), so the plugin only has to load, without systemd.
if [ -d /sys/fs/cgroup/unified ] || [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then CGROUP=cgroup/v1; else CGROUP=cgroup/v2; fi
printf '# petl-slurm\nCgroupPlugin=%s\nIgnoreSystemd=yes\n' "$CGROUP" > $CONF/cgroup.conf

# ---------------------------------------------------------------- daemons
stop_all
slurmdbd || fail "slurmdbd did not start (log: $STATE/log/slurmdbd.log): $(tail -1 $STATE/log/slurmdbd.log)"
for _ in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -n list cluster >/dev/null 2>&1 || fail "slurmdbd does not answer (log: $STATE/log/slurmdbd.log): $(tail -1 $STATE/log/slurmdbd.log)"
sacctmgr -i add cluster petl >/dev/null 2>&1 || true
slurmctld || fail "slurmctld did not start (log: $STATE/log/slurmctld.log): $(tail -1 $STATE/log/slurmctld.log)"
slurmd || fail "slurmd did not start (log: $STATE/log/slurmd.log): $(tail -1 $STATE/log/slurmd.log)"
for _ in $(seq 60); do
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null)
    case "$state" in idle*|mix*|alloc*) break ;; esac
    sleep 1
done
case "$state" in
    idle*|mix*|alloc*) ;;
    *) fail "the node $NODE is '${state:-not known}' in sinfo (logs: $STATE/log/slurmctld.log, $STATE/log/slurmd.log): $(tail -1 $STATE/log/slurmd.log)" ;;
esac
sacct -n -X -S now >/dev/null 2>&1 || fail "sacct does not work: accounting through slurmdbd is down (log: $STATE/log/slurmdbd.log)"
log "slurmdbd, slurmctld, slurmd: ok; node $NODE ($CPUS CPUs, $MEM_MB MB) in partition debug"
sinfo
