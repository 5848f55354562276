#!/usr/bin/env bash
# trainer fit on several nodes with torchrun (c10d rendezvous): one torchrun per node, one process
# per GPU, DistributedDataParallel inside. --batch-size is per process: 2 nodes x 4 GPUs x 32 = 256.
#
# On SLURM (2 nodes x 4 GPUs; srun starts one torchrun per node):
#   sbatch pipelines/torchrun_train.sh temporal
#   sbatch pipelines/torchrun_train.sh spatial
# Without SLURM, run the same on every node, with the same RDZV_ID and RDZV_HOST (any one of them):
#   NNODES=2 RDZV_HOST=node0.example.org RDZV_ID=ucf101-temporal bash pipelines/torchrun_train.sh temporal
#
# Requeued or rerun, it continues from RUN_DIR/checkpoint.pt (--resume is added when it exists). On SIGTERM
# (preemption, scancel, the time limit) the ranks finish their step and save it first, mid-epoch: the rerun
# continues at the next batch. SLURM requeues a preempted job itself (--requeue). torchrun exits 1 whatever its
# ranks' statuses; the job exits with theirs (the most final one, see the end), e.g. 143 after that save.
# Uses the Apptainer image in FLOWPREP_SIF when set, else the venv in FLOWPREP_VENV.
#
#SBATCH --job-name=trainer-fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=trainer-fit-%j.log
#SBATCH --requeue

set -euo pipefail

STREAM=${1:?usage: torchrun_train.sh spatial|temporal}
DATA=${DATA:-/shared/ucf101}
SHARDS=${SHARDS:-$DATA/shards}
SPLITS=${SPLITS:-$DATA/splits}  # train01.txt and val01.txt as made in pipelines/ucf101.md
RUN_DIR=${RUN_DIR:-$DATA/runs/$STREAM}
NPROC_PER_NODE=${NPROC_PER_NODE:-4}
RDZV_PORT=${RDZV_PORT:-29500}
FLOWPREP_VENV=${FLOWPREP_VENV:-$HOME/flowprep/.venv}
FLOWPREP_SIF=${FLOWPREP_SIF:-}
# --pretrained imagenet reads torchvision's cache: fill it once on shared storage (pipelines/ucf101.md)
# so that the ranks do not all download the weights at the same time.
export TORCH_HOME=${TORCH_HOME:-$DATA/torch}

case "$STREAM" in
    # Starting points from the two-stream / TSN literature (ImageNet init, SGD momentum 0.9).
    spatial) LR=0.001; EPOCHS=60; DROPOUT=0.8 ;;
    temporal) LR=0.005; EPOCHS=200; DROPOUT=0.7 ;;
    *) echo "expected spatial or temporal, got '$STREAM'" >&2; exit 2 ;;
esac

if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    NNODES=$SLURM_JOB_NUM_NODES
    mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")  # no `| head`: SIGPIPE + pipefail
    RDZV_HOST=${HOSTS[0]}
    RDZV_ID=$SLURM_JOB_ID
    LAUNCH=(srun --ntasks-per-node=1 --kill-on-bad-exit=1)
else
    NNODES=${NNODES:?set NNODES, RDZV_HOST and RDZV_ID (the same on every node)}
    RDZV_HOST=${RDZV_HOST:?set RDZV_HOST to one of the nodes}
    RDZV_ID=${RDZV_ID:?set RDZV_ID to a job name shared by the nodes}
    LAUNCH=()
fi

if [[ -n "$FLOWPREP_SIF" ]]; then
    TORCHRUN=(apptainer exec --nv --bind "$DATA" "$FLOWPREP_SIF" torchrun)
else
    TORCHRUN=("$FLOWPREP_VENV/bin/torchrun")
fi

RESUME=()
if [[ -f "$RUN_DIR/checkpoint.pt" ]]; then
    RESUME=(--resume)
fi

# torchrun exits 1 whatever its processes' statuses; each leaves its own in RUN_DIR/.exit-status/rank-N, and
# this job exits with the most final of them (FINAL_FIRST in trainer/cli.py): 143 after a preemption's save,
# 75 for a full disk (rerun: it resumes), 4 busy, 1 bad data (do not rerun).
rm -rf "$RUN_DIR/.exit-status"
set +e
${LAUNCH[@]+"${LAUNCH[@]}"} "${TORCHRUN[@]}" \
    --nnodes "$NNODES" \
    --nproc-per-node "$NPROC_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$RDZV_HOST:$RDZV_PORT" \
    --rdzv-id "$RDZV_ID" \
    -m trainer fit \
    --stream "$STREAM" \
    --shards "$SHARDS" \
    --train-list "$SPLITS/train01.txt" \
    --val-list "$SPLITS/val01.txt" \
    --out "$RUN_DIR" \
    --arch resnet50 \
    --pretrained imagenet \
    --epochs "$EPOCHS" \
    --batch-size 32 \
    --lr "$LR" \
    --dropout "$DROPOUT" \
    --flow-length 10 \
    --crop-size 224 \
    --workers 8 \
    --device cuda \
    --no-progress \
    ${RESUME[@]+"${RESUME[@]}"}
status=$?
set -e
if ((status != 0)); then
    for code in 2 1 4 75 143 130; do  # FINAL_FIRST
        if grep -qsx "$code" "$RUN_DIR"/.exit-status/rank-*; then
            status=$code
            break
        fi
    done
fi
exit "$status"
