#!/usr/bin/env bash
# Pretraining on every GPU of this machine: one process per GPU, --batch_size clips each.
#   GPUS=8 bash scripts/one_machine.sh --dataset ucf101 --split 3 --batch_size 16 --img_dim 224 --epochs 300
set -euo pipefail
cd "$(dirname "$0")/.."
torchrun --standalone --nproc_per_node "${GPUS:-$(nvidia-smi -L | wc -l)}" CPCTrans/main.py "$@"
