#!/usr/bin/env bash
# The prepared GPU run that takes the H200 training gap apart, in one device call:
#
#   bash benchmarks/gpu_gap.sh     # OUT (default bench_out) receives gpu_bench.json, gpu_gap.md and
#                                  # gpu_bench_partial.md (this run's training and sampling rows);
#                                  # PYTHON (default python) is the interpreter, BUDGET the seconds
#
# diffusers is installed first from wheels in .bench_wheels/ when that folder is there (fetch them
# beforehand with `pip download diffusers -d .bench_wheels --python-version 3.12 --only-binary=:all:`
# and carry the folder to the GPU machine), so the sampling section also times diffusers' loop.
# Then: python benchmarks/gpu_bench.py --merge OUT/gpu_gap.md (and copy rows from the partial file by hand).
set -u
cd "$(dirname "$0")/.."
if [ -d .bench_wheels ]; then
    "${PYTHON:-python}" -m pip install -q --no-index --find-links .bench_wheels diffusers \
        || echo "diffusers could not be installed from .bench_wheels; its row will be skipped"
fi
# compile runs last, in a child process given what is left of the budget: the compiled Trainer,
# then compiled sampling (one compile since the probe matches the loop's input layout).
exec "${PYTHON:-python}" benchmarks/gpu_bench.py --only train_source,train_ours,ladder,ablate,profile,sample,compile \
    --budget "${BUDGET:-330}" --out "${OUT:-bench_out}" "$@"
