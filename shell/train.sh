#!/usr/bin/env bash
# Train Bi-IRRA with torchrun on one node.
#   bash shell/train.sh [NUM_GPUS=4] [CONFIG=config/config.yaml] [key.sub=value ...]
# With no arguments: 4 GPUs and config/config.yaml, like upstream's command. The run starts
# only after `main.py --check` has loaded and validated every input.
# Multi-node: run torchrun yourself with --nnodes/--node_rank/--rdzv_endpoint (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${1:-4}
CONFIG=${2:-config/config.yaml}
shift $(( $# > 2 ? 2 : $# ))
python main.py --config "$CONFIG" --check "$@" > /dev/null
exec torchrun --standalone --nproc_per_node="$NGPU" main.py --config "$CONFIG" "$@"
