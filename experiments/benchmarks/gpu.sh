#!/usr/bin/env bash
# The scaling benchmarks on a GPU machine, each with its CPU baseline on the same machine
# in the same session (absolute times across machines are not comparable).
#
#   bash experiments/benchmarks/gpu.sh [OUT]        # default OUT: runs/gpu
#
# Stages (each logged to OUT/<stage>.log, results under OUT/<stage>/):
#   sharding_cpu    experiments/benchmarks/sharding.py on the host CPU, 1/2/4/8 forced devices
#   sharding_gpu    the same problem on one GPU (GPU / CPU ratio: compare with sharding_cpu)
#   letkf_gpu       experiments/benchmarks/online_letkf_scale.py, n = 40, 400, 4000, on the GPU
#   letkf_cpu       its n = 4000 row on the host CPU
#   gradients_gpu   experiments/benchmarks/gradients.py (no RSS: host memory says nothing here)
#   mesh_gpu        experiments/mesh_train.py --resume: re-evaluates trained checkpoints
#                   (needs checkpoints/mesh_train and runs/mesh_train/data): prediction on
#                   the GPU against the finite-element solve on the host CPU
#   sharding_big_*  sharding.py with n = 4000, N = 128 on the GPU and on one CPU device
# A stage that fails or runs past STAGE_TIMEOUT seconds (default 240) is reported and
# the next one runs. PYTHON (default python3) must have JAX with its GPU plugin.
set -u
out=${1:-runs/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg

stage() {
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name: $*"
    timeout "${STAGE_TIMEOUT:-240}" "$@" >"$out/$name.log" 2>&1
    echo "   exit $?, $((SECONDS - start)) s"
    tail -n 16 "$out/$name.log"
}

$py -c "import jax, equinox, diffrax, lineax, optax, orbax.checkpoint; print(jax.__version__, \
equinox.__version__, diffrax.__version__, jax.devices())" || exit 1
$py -c "import hybridda" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

bench=experiments/benchmarks
stage sharding_cpu env JAX_PLATFORMS=cpu $py $bench/sharding.py --devices 1 2 4 8 \
    --out "$out/sharding_cpu"
stage sharding_gpu $py $bench/sharding.py --devices 1 --out "$out/sharding_gpu"
stage letkf_gpu $py $bench/online_letkf_scale.py --out "$out/letkf_gpu"
stage letkf_cpu env JAX_PLATFORMS=cpu $py $bench/online_letkf_scale.py --sizes 4000 \
    --out "$out/letkf_cpu"
stage gradients_gpu $py $bench/gradients.py --no-rss --repeats 20 --out "$out/gradients_gpu"
if [ -d checkpoints/mesh_train ] && [ -d runs/mesh_train/data ]; then
    stage mesh_gpu $py experiments/mesh_train.py --resume --no-progress \
        --data runs/mesh_train/data --out "$out/mesh_gpu"
fi
big=(--n 4000 --members 128 --repeats 3)
stage sharding_big_gpu $py $bench/sharding.py --devices 1 "${big[@]}" --out "$out/sharding_big_gpu"
stage sharding_big_cpu env JAX_PLATFORMS=cpu $py $bench/sharding.py --devices 1 "${big[@]}" \
    --out "$out/sharding_big_cpu"
