#!/usr/bin/env bash
# flowprep extract as a SLURM job array: 16 tasks, one shared output folder.
#
#   sbatch pipelines/slurm_extract.sh                  # all 16 tasks
#   sbatch --array=3,7 pipelines/slurm_extract.sh      # rerun tasks 3 and 7: they resume their own work
#   sbatch --dependency=afterany:JOBID --wrap "flowprep verify $OUT"   # check the whole set afterwards
#
# VIDEOS and OUT must be on a file system every node mounts (the same paths everywhere). Each task
# writes only task000NN-shard-*.h5 and manifest-000NN-of-00016.json into OUT.
#
# Runs the Apptainer/Singularity image in FLOWPREP_SIF when set (build it from the Docker image:
# `apptainer build flowprep.sif docker-daemon://flowprep:latest`), else the venv in FLOWPREP_VENV.
#
#SBATCH --job-name=flowprep-extract
#SBATCH --array=0-15
#SBATCH --cpus-per-task=16
#SBATCH --mem-per-cpu=1G
#SBATCH --time=12:00:00
#SBATCH --output=flowprep-extract-%A_%a.log
#SBATCH --requeue

set -euo pipefail

# Keep TASK_COUNT equal to the size of --array above. Passing it makes SLURM_ARRAY_TASK_ID the task
# index itself, so a resubmitted subset (--array=3,7) redoes exactly tasks 3 and 7.
TASK_COUNT=16

VIDEOS=${VIDEOS:-/shared/ucf101/UCF-101}
OUT=${OUT:-/shared/ucf101/shards}
CLASS_INDEX=${CLASS_INDEX:-/shared/ucf101/ucfTrainTestlist/classInd.txt}
FLOWPREP_VENV=${FLOWPREP_VENV:-$HOME/flowprep/.venv}
FLOWPREP_SIF=${FLOWPREP_SIF:-}

flowprep() {
    if [[ -n "$FLOWPREP_SIF" ]]; then
        apptainer exec --bind "$VIDEOS" --bind "$(dirname "$OUT")" "$FLOWPREP_SIF" flowprep "$@"
    else
        "$FLOWPREP_VENV/bin/flowprep" "$@"
    fi
}

mkdir -p "$OUT"
# Exit status (flowprep extract --help, pipelines/README.md): 0 done (with --failed-videos-ok also when
# some videos could not be decoded: they are listed in OUT/failures.jsonl and by verify), 2 usage error
# (final). The retriable ones below (3 cluster, 4 busy, 75 disk full / I/O error / crash, 130
# interrupted) requeue this task, up to MAX_REQUEUES times: the rerun resumes. A task killed by SLURM
# (preemption, time limit, node failure) is requeued by SLURM itself (--requeue).
RETRIABLE="3 4 75 130"
MAX_REQUEUES=3
status=0
flowprep extract \
    --videos "$VIDEOS" \
    --out "$OUT" \
    --class-index "$CLASS_INDEX" \
    --method tvl1 \
    --bound 20 \
    --videos-per-shard 100 \
    --workers "${SLURM_CPUS_PER_TASK:-1}" \
    --task-count "$TASK_COUNT" \
    --failed-videos-ok \
    --no-progress || status=$?
if [[ " $RETRIABLE " == *" $status "* && ${SLURM_RESTART_COUNT:-0} -lt $MAX_REQUEUES ]]; then
    echo "flowprep extract exited $status (retriable): requeueing task ${SLURM_ARRAY_TASK_ID:-}" >&2
    scontrol requeue "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}"
fi
exit "$status"
