#!/usr/bin/env bash
# Pretraining on two machines: run this on both, with the first machine's address in HEAD (a port it can open)
# and NODE_RANK 0 on the first machine, 1 on the second. Every machine reads the same data and log folders
# (a shared file system), and rank 0 writes the checkpoints.
#   HEAD=10.1.2.3 NODE_RANK=0 GPUS=8 bash scripts/two_machines.sh --dataset ucf101 --split 3 --batch_size 16 --img_dim 224
set -euo pipefail
cd "$(dirname "$0")/.."
torchrun --nnodes 2 --node_rank "$NODE_RANK" --nproc_per_node "${GPUS:-8}" \
    --rdzv_backend c10d --rdzv_endpoint "$HEAD:${PORT:-29500}" --rdzv_id "${RUN_ID:-cpctrans}" \
    CPCTrans/main.py "$@"
