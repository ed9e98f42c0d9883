#!/usr/bin/env bash
# Start N spurjax processes on this machine, each with D fake CPU devices, joined by jax.distributed.
#   launch/local.sh N D spurjax erm --config configs/synth.py:tiny --workdir runs/local
set -euo pipefail
N=${1:?number of processes}; D=${2:?devices per process}; shift 2
PORT=${SPURJAX_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < N; i++)); do
  SPURJAX_COORDINATOR="localhost:${PORT}" SPURJAX_NUM_PROCESSES="$N" SPURJAX_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${D}" \
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
