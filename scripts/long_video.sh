#!/usr/bin/env bash
# Optional stage 3 of the 7B recipe (configs/train/stage3_long_video.yaml): long-video instruction tuning
# after stage 2, on one node with the DeepSpeed launcher (ZeRO-3 by default: the sequences are long).
#   NUM_GPUS=8 scripts/long_video.sh data.0.path=… data.0.video_root=… [key=value …]
# Multi-node: DEEPSPEED_ARGS="--hostfile hostfile --master_addr node0" (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
exec deepspeed --num_gpus "${NUM_GPUS:-8}" ${DEEPSPEED_ARGS:-} --no_local_rank \
    --module llava_vid.cli train configs/train/stage3_long_video.yaml "$@"
