#!/usr/bin/env bash
# Run a spurjax command on every worker of a TPU-VM pod slice (JAX discovers the pod itself).
#   launch/tpu_pod.sh my-tpu us-central2-b spurjax erm --config configs/waterbirds.py --workdir gs://bucket/wb
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; shift 2
CMD="cd ~/spurjax && pip install -q -e . 'jax[tpu]' && SPURJAX_DISTRIBUTED=auto $*"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$CMD"
