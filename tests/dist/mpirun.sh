#!/usr/bin/env bash
# tests/dist/mpirun.sh NP LIMIT LUATRAIN SCRIPT [ARGS...] - run a multi-process test under
# mpirun, as ctest does: NP ranks (oversubscribing this machine's cores), one thread each,
# ending within LIMIT seconds, which is ctest's own timeout for the test: mpirun's --timeout
# comes first, timeout(1) behind it in case mpirun itself hangs, and then every rank of the
# job still alive is killed (mpirun puts each rank in its own process group, so a launcher
# that crashed or was killed leaves its ranks behind, and they would keep ctest waiting on
# their output). Without mpirun it prints one line and exits 77, ctest's skip.
set -u
np=$1 limit=$2 luatrain=$3
shift 3
if ! command -v mpirun > /dev/null 2>&1; then
    echo "SKIP: mpirun not found (install openmpi-bin; tools/run.sh test does)"
    exit 77
fi
# As root (containers, CI) Open MPI refuses to start without these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Ranks share 2 cores here: a rank that spins while waiting steals them from its peers.
export OMPI_MCA_mpi_yield_when_idle=1 OMP_NUM_THREADS=1
# mpirun gets two thirds of the limit up to 60 s, and the limit less 20 s above it
if [ "$limit" -gt 60 ]; then mlimit=$((limit - 20)); else mlimit=$((limit * 2 / 3)); fi
# The job's ranks are found afterwards by this tag in their environment; only the job's
# processes carry it (not this script, nor the grep below).
tag="lt-mpirun-$$-$RANDOM$RANDOM"
env LT_MPIRUN_JOB="$tag" timeout --kill-after=5 "$((mlimit + 10))" \
    mpirun --oversubscribe --bind-to none --timeout "$mlimit" -np "$np" "$luatrain" "$@"
rc=$?
left=""
for e in /proc/[0-9]*/environ; do
    if grep -qzx "LT_MPIRUN_JOB=$tag" "$e" 2> /dev/null; then
        p=${e#/proc/}
        left="$left ${p%/environ}"
    fi
done
if [ -n "$left" ]; then
    # shellcheck disable=SC2086 # one pid per word
    kill -9 $left 2> /dev/null
    echo "mpirun.sh: mpirun ended (exit $rc) with ranks still running; killed:$left" >&2
    [ "$rc" -eq 0 ] && rc=1
fi
exit "$rc"
