#!/usr/bin/env bash
# tests/dist/mpirun.sh NP TIMEOUT LUATRAIN SCRIPT [ARGS...] - run a multi-process test under
# mpirun, as ctest does: NP ranks (oversubscribing this machine's cores), one thread each,
# bounded by TIMEOUT seconds (mpirun's own --timeout, and timeout(1) behind it in case
# mpirun itself hangs). Without mpirun it prints one line and exits 77, ctest's skip.
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
exec timeout --kill-after=10 "$((limit + 15))" \
    mpirun --oversubscribe --bind-to none --timeout "$limit" -np "$np" "$luatrain" "$@"
