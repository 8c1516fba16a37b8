#!/bin/bash
# The paper's 1.4B MeSH run (configs/paper-1.4b.yaml) on N nodes of 8 GPUs under SLURM: one
# torchrun per node, the first node of the allocation hosts the c10d rendezvous.
#
#   sbatch --nodes 4 scripts/slurm-paper-1.4b.sh shards/pile runs/paper-1.4b-mesh
#   sbatch --nodes 4 scripts/slurm-paper-1.4b.sh shards/pile runs/paper-1.4b-vanilla --layout 24 --scheme base
#
# DATA (a shard folder, `meshlm data prepare --tokenizer neox`) and OUT must be on a filesystem every
# node sees: every rank reads the shards, rank 0 writes the checkpoints, and a requeued job resumes
# from them (--resume). The node count must divide the 512-sequence batch (1, 2, 4, 8, ... nodes).
#SBATCH --job-name=meshlm-1.4b
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: sbatch --nodes N $0 DATA OUT [meshlm train flags...]" >&2
    exit 2
fi
DATA=$1 OUT=$2
shift 2

HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node 8 \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD:29500" \
    -m meshlm.cli train --config configs/paper-1.4b.yaml --data "$DATA" --out "$OUT" --resume "$@"
