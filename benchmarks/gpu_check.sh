#!/usr/bin/env bash
# The GPU check on a lent GPU machine, in one call (benchmarks/gpu_check.py says what it runs).
# Build .gpu/ here first (`.venv/bin/python benchmarks/gpu_bundle.py`), then, through the
# device tool, carry ".gpu" and run `bash benchmarks/gpu_check.sh` (timeout_s 600): it uses the
# machine's own Python and CUDA PyTorch, adds the packed packages and samples, and writes
# gpu_check.md, .json and .log to $OUT (here: the current folder). Extra arguments go to
# gpu_check.py (--dry-run checks the whole path on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -f .gpu/site.tar.xz ]; then
  echo "gpu_check.sh: error: no .gpu/site.tar.xz: run benchmarks/gpu_bundle.py here and carry .gpu" >&2
  exit 2
fi
site=$(mktemp -d /tmp/iste-gpu-site.XXXXXX)
"$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
  .gpu/site.tar.xz "$site"
export PYTHONPATH="$PWD/src:$site/site${PYTHONPATH:+:$PYTHONPATH}"
export ISTE_CACHE_DIR="$PWD/.gpu/cache" PYTHONUNBUFFERED=1
out=${OUT:-.}
"$python" benchmarks/gpu_check.py --out "$out/gpu_check.md" "$@" 2>&1 | tee "$out/gpu_check.log"
