#!/usr/bin/env bash
# Stage 2 of the 7B recipe (configs/train/stage2_finetune.yaml) on one node with the DeepSpeed launcher.
#   NUM_GPUS=8 scripts/finetune.sh model=checkpoints/llava-vid-7b-stage1/final [key=value …]
# ZeRO-3 instead of ZeRO-2: add deepspeed=configs/deepspeed/zero3.json.
# Multi-node: DEEPSPEED_ARGS="--hostfile hostfile --master_addr node0" (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
exec deepspeed --num_gpus "${NUM_GPUS:-8}" ${DEEPSPEED_ARGS:-} --no_local_rank \
    --module llava_vid.cli train configs/train/stage2_finetune.yaml "$@"
