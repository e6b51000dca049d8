#!/usr/bin/env bash
# `mpirun -np 2 cuboid search` splits the space across ranks and gathers on rank 0: its CSV (every plan) and its
# printed table must equal the single-process search's, but for the line with the wall time.
# Usage: search_mpi_test.sh CUBOID_BINARY WORK_DIR MPIEXEC [MPI FLAGS...]
set -euo pipefail
cuboid=${1:?usage: search_mpi_test.sh CUBOID_BINARY WORK_DIR MPIEXEC [FLAGS...]}
work=${2:?}
shift 2
mpirun_cmd=("$@")
rm -rf "$work" && mkdir -p "$work"
args=(search --model gpt3-2.7b --gpu a100-80gb --num-gpus 16,32 --global-batch-size 256 --jobs 1)

"$cuboid" "${args[@]}" --csv "$work/single.csv" > "$work/single.txt"
"${mpirun_cmd[@]}" -np 2 "$cuboid" "${args[@]}" --csv "$work/mpi.csv" > "$work/mpi.txt"
cmp "$work/single.csv" "$work/mpi.csv" || { echo "FAIL: the MPI-split CSV differs"; exit 1; }
strip() { grep -v 'plans/s' "$1"; }
diff <(strip "$work/single.txt") <(strip "$work/mpi.txt") || { echo "FAIL: the MPI-split table differs"; exit 1; }
rows=$(($(wc -l < "$work/single.csv") - 1))
[[ $rows -gt 100 ]] || { echo "FAIL: only $rows plans in the space"; exit 1; }
echo "ok: $rows plans, identical"
