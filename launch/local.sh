#!/usr/bin/env bash
# Start N spurjax processes on this machine, each with D fake CPU devices, joined by jax.distributed
# (gloo collectives). All share the working directory; process 0 writes reports.
#   launch/local.sh N D spurjax erm --config configs/synth.py:tiny --workdir runs/local
# Logs: process i's output is prefixed with [i]. If one process fails, the others are stopped
# (they would otherwise wait for it in a collective) and the first failing status is returned.
set -euo pipefail
N=${1:?number of processes}; D=${2:?devices per process}; shift 2
[[ $# -gt 0 ]] || { echo "usage: launch/local.sh N D command [args...]" >&2; exit 2; }
PORT=${SPURJAX_PORT:-$((20000 + RANDOM % 20000))}
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'stop; exit 130' INT TERM
for ((i = 0; i < N; i++)); do
  SPURJAX_COORDINATOR="localhost:${PORT}" SPURJAX_NUM_PROCESSES="$N" SPURJAX_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${D}" \
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo "$@" > >(sed "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
rc=0
while [[ ${#pids[@]} -gt 0 ]]; do
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null && continue
    status=0
    wait "${pids[$i]}" || status=$?
    unset "pids[$i]"
    if [[ $status -ne 0 && $rc -eq 0 ]]; then
      rc=$status
      echo "launch/local.sh: process $i exited with status $status; stopping the others" >&2
      stop
    fi
  done
  sleep 0.5
done
exit $rc
