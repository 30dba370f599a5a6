#!/usr/bin/env bash
# What a lent GPU session runs, in two device calls (one call may run 10 minutes; a session
# has 15 minutes of device time, the machine's start included):
#   bash benchmarks/gpu_session.sh checks   # ~4 min: the CUDA tests, then frozen_paths.py
#   bash benchmarks/gpu_session.sh bench    # ~6-8 min: benchmarks/gpu.py (issue 12's table),
#                                           # then amp_eval.py on its two CIFAR-10 runs
# "checks": every learner stops, resumes and finishes on the GPU
# (tests/learners/test_contract.py -k cuda); then folded BN and vmap-batched old extractors
# timed on the GPU. Each part has its own time limit and a failed part does not stop the
# next. Results go to $OUT (the device machine's) or to the folder given second. Run from the
# repository root; "bench" needs .bench-data carried (benchmarks/README.md, "One command on a
# GPU machine").
set -u
part=${1:?usage: gpu_session.sh checks|bench [OUT]}
out=${2:-${OUT:-gpu-session}}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$out/device-$part.txt" 2>&1
case $part in
checks)
    timeout 200 python3 -m pytest -p no:cacheprovider -q -m "not slow and not ui" \
        tests/learners/test_contract.py -k cuda > "$out/cuda_tests.txt" 2>&1
    echo "cuda tests: exit $?" | tee -a "$out/summary.txt"
    timeout 60 python3 benchmarks/frozen_paths.py --device cuda --extractors 9 --repeats 20 \
        --json "$out/frozen.json" > "$out/frozen.txt" 2>&1
    echo "frozen_paths.py: exit $?" | tee -a "$out/summary.txt"
    tail -n 25 "$out/cuda_tests.txt" "$out/frozen.txt"
    ;;
bench)
    # gpu.py's folder holds its runs and synthetic data: too much to bring back; keep gpu.json
    timeout 520 python3 benchmarks/gpu.py --data-root .bench-data --out /tmp/gpu-bench \
        > "$out/gpu.txt" 2>&1
    echo "gpu.py: exit $?" | tee -a "$out/summary.txt"
    cp /tmp/gpu-bench/gpu.json "$out/" 2>/dev/null
    # gpu.py's CIFAR-10 runs (trained in bf16 and in fp32), evaluated in fp32, bf16 and fp16
    timeout 60 python3 benchmarks/amp_eval.py /tmp/gpu-bench/runs/cifar10_bf16 \
        /tmp/gpu-bench/runs/cifar10_off --device cuda --json "$out/amp_eval.json" \
        > "$out/amp_eval.txt" 2>&1
    echo "amp_eval.py: exit $?" | tee -a "$out/summary.txt"
    tail -n 30 "$out/gpu.txt" "$out/amp_eval.txt"
    ;;
*) echo "unknown part '$part': checks or bench" >&2; exit 2 ;;
esac
