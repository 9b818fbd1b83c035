#!/usr/bin/env bash
# Multi-node training on SLURM: one `srun` task per node, each running train_net.py with
#   --num-gpus <GPUs per node> --num-machines <nodes> --machine-rank $SLURM_NODEID
#   --dist-url tcp://<first host of the allocation>:<free port>
# (train_net.py then spawns one process per GPU; NCCL between them).
#
# Usage, from the repository root (the job's working directory is where sbatch runs):
#   sbatch scripts/slurm_train.sh --config-file configs/COCO/atss_R_50_FPN_1x.py [flags] [key=value ...]
#   sbatch --nodes 4 scripts/slurm_train.sh ...      # the header below is only a default
#   scripts/slurm_train.sh --dry-run ARGS...         # print each node's command, run nothing
# Flags before the key=value overrides (train_net.py refuses a flag among them). The launch
# flags above come from the allocation: do not pass them. Environment:
#   MASTER_PORT   rendezvous port (default: a port free on the first host, found there);
#   ATSS_PYTHON   interpreter (default: .venv/bin/python of the repository, else python).
#
# Defaults for the COCO configs (16 images per iteration = 2 nodes x 8 GPUs x 1 image; 32 CPUs
# per node feed 8 GPUs x 4 data-loader workers). Override on the sbatch command line.
#SBATCH --job-name=atss
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# Under sbatch this file runs from a spool copy: find the repository from the submit folder.
if [[ -n "${SLURM_SUBMIT_DIR:-}" && -f "${SLURM_SUBMIT_DIR}/train_net.py" ]]; then
    REPO="${SLURM_SUBMIT_DIR}"
else
    REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi

die() {
    echo "slurm_train.sh: error: $*" >&2
    exit 2
}

python_bin() {
    if [[ -n "${ATSS_PYTHON:-}" ]]; then
        echo "${ATSS_PYTHON}"
    elif [[ -x "${REPO}/.venv/bin/python" ]]; then
        echo "${REPO}/.venv/bin/python"
    else
        echo python
    fi
}

num_nodes() {
    local n="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}"
    [[ "${n}" =~ ^[1-9][0-9]*$ ]] || die "SLURM_JOB_NUM_NODES is '${n}': not inside a SLURM allocation?"
    echo "${n}"
}

# GPUs on this node: SLURM_GPUS_ON_NODE (set when GPUs are allocated), else the count in
# SLURM_GPUS_PER_NODE ("8" or "a100:8"), else the devices in CUDA_VISIBLE_DEVICES.
gpus_per_node() {
    local n="${SLURM_GPUS_ON_NODE:-}"
    if [[ -z "${n}" && -n "${SLURM_GPUS_PER_NODE:-}" ]]; then
        n="${SLURM_GPUS_PER_NODE##*:}"
    fi
    if [[ -z "${n}" && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        n="$(tr ',' '\n' <<<"${CUDA_VISIBLE_DEVICES}" | grep -c .)"
    fi
    [[ "${n}" =~ ^[1-9][0-9]*$ ]] || die "cannot tell the GPUs per node (SLURM_GPUS_ON_NODE, \
SLURM_GPUS_PER_NODE and CUDA_VISIBLE_DEVICES unset or 0): request them, e.g. --gpus-per-node=8"
    echo "${n}"
}

first_host() {
    [[ -n "${SLURM_JOB_NODELIST:-}" ]] || die "SLURM_JOB_NODELIST is not set"
    local host
    host="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
    [[ -n "${host}" ]] || die "scontrol show hostnames '${SLURM_JOB_NODELIST}' gave no host"
    echo "${host}"
}

# A port free on this host (the batch step runs on the first host of the allocation).
free_port() {
    "$(python_bin)" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

refuse_launch_flags() {
    local arg
    for arg in "$@"; do
        case "${arg}" in
        --num-gpus | --num-gpus=* | --num-machines | --num-machines=* | --machine-rank | \
            --machine-rank=* | --dist-url | --dist-url=*)
            die "${arg%%=*} is set from the allocation (nodes, GPUs per node, SLURM_NODEID, \
first host); leave it out"
            ;;
        esac
    done
}

# The train_net.py command of node $1 (0-based) with rendezvous $2, $3 GPUs per node and $4
# nodes, one argument per line. Launch flags first:
# the user's arguments may end with key=value overrides, after which no flag may stand.
node_command() {
    local node_id="$1" dist_url="$2" gpus="$3" nodes="$4"
    shift 4
    printf '%s\n' "$(python_bin)" "${REPO}/train_net.py" --num-gpus "${gpus}" \
        --num-machines "${nodes}" --machine-rank "${node_id}" --dist-url "${dist_url}" "$@"
}

main() {
    local mode=batch
    case "${1:-}" in
    --dry-run | --node)
        mode="${1#--}"
        shift
        ;;
    esac
    [[ $# -gt 0 ]] || die "no arguments: give at least --config-file FILE"
    refuse_launch_flags "$@"
    local nodes gpus
    nodes="$(num_nodes)"
    gpus="$(gpus_per_node)"

    if [[ "${mode}" == node ]]; then # inside srun: one task on each node
        [[ "${SLURM_NODEID:-}" =~ ^[0-9]+$ ]] || die "SLURM_NODEID is not set"
        [[ -n "${ATSS_DIST_URL:-}" ]] || die "ATSS_DIST_URL is not set (run through sbatch)"
        local -a cmd
        mapfile -t cmd < <(node_command "${SLURM_NODEID}" "${ATSS_DIST_URL}" "${gpus}" "${nodes}" "$@")
        cd "${REPO}"
        exec "${cmd[@]}"
    fi

    local host port
    host="$(first_host)"
    port="${MASTER_PORT:-$(free_port)}"
    export ATSS_DIST_URL="tcp://${host}:${port}"
    if [[ "${mode}" == dry-run ]]; then # what each node would run
        local node line
        for ((node = 0; node < nodes; node++)); do
            local -a cmd=()
            mapfile -t cmd < <(node_command "${node}" "${ATSS_DIST_URL}" "${gpus}" "${nodes}" "$@")
            printf -v line '%q ' "${cmd[@]}"
            echo "node ${node}: ${line% }"
        done
        return 0
    fi
    echo "slurm_train.sh: ${nodes} nodes x ${gpus} GPUs, rendezvous ${ATSS_DIST_URL}"
    # One task per node; a node that fails stops the others (no rank waits for a dead peer).
    srun --nodes="${nodes}" --ntasks="${nodes}" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        bash "${REPO}/scripts/slurm_train.sh" --node "$@"
}

main "$@"
