#!/usr/bin/env bash
# Run a spurjax command on every worker of a TPU-VM pod slice (JAX discovers the pod itself).
#   launch/tpu_pod.sh my-tpu us-central2-b spurjax erm --config configs/waterbirds.py --workdir /mnt/shared/wb
# Every worker needs this repository at ~/spurjax (copy it once, e.g.
#   gcloud compute tpus tpu-vm scp --recurse --worker=all --zone ZONE . TPU:~/spurjax)
# and the same data and --workdir paths (a shared filesystem: all workers write checkpoints
# there, worker 0 the reports). Arguments are passed through with their quoting intact.
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; shift 2
[[ $# -gt 0 ]] || { echo "usage: launch/tpu_pod.sh TPU ZONE command [args...]" >&2; exit 2; }
ARGS=$(printf '%q ' "$@")
CMD="cd ~/spurjax && pip install -q -e . 'jax[tpu]' && SPURJAX_DISTRIBUTED=auto ${ARGS}"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$CMD"
