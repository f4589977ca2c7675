#!/usr/bin/env bash
# Stage 1 of the 7B recipe (configs/train/stage1_pretrain.yaml) on one node with the DeepSpeed launcher.
#   NUM_GPUS=8 scripts/pretrain.sh [key=value …]        e.g. output_dir=checkpoints/s1 data.0.path=…
# Multi-node: DEEPSPEED_ARGS="--hostfile hostfile --master_addr node0" (see the README).
# The batch arithmetic (global 256 = per-device × GPUs × accumulation) is checked before any work.
set -euo pipefail
cd "$(dirname "$0")/.."
exec deepspeed --num_gpus "${NUM_GPUS:-8}" ${DEEPSPEED_ARGS:-} --no_local_rank \
    --module llava_vid.cli train configs/train/stage1_pretrain.yaml "$@"
