#!/usr/bin/env bash
# The vhctl benchmarks in one command: vhctl against TRL, side by side, in the same run.
#
#   bash benchmarks/run.sh            full run (about 25 min on 2 cores): benchmarks/results/*.json, then
#                                     RESULTS.md and the docs' generated figures from them (report.py)
#   bash benchmarks/run.sh --quick    smoke run (a few minutes): results and report under benchmarks/_work/
#
# TRL is installed only into benchmarks/.venv-bench (created on first use, gitignored), never into the
# project's environment; BENCH_PY=/path/to/python uses another environment that has trl 1.12.0.
# Models are built from configs with random weights: nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

VENV=benchmarks/.venv-bench
PY="${BENCH_PY:-$VENV/bin/python}"
if ! "$PY" -c "import trl, torch, vhctl.cli.app, vhctl.scoring; assert trl.__version__ == '1.12.0'" 2>/dev/null; then
    echo "== creating the benchmark environment $VENV (torch 2.13.0 from local disk, trl 1.12.0, vhctl -e .)"
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install -q torch==2.13.0 -e . trl==1.12.0
fi

export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 BENCH_THREADS=2
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1

start=$(date +%s)
echo "== set-up: models from configs, vhctl checkpoints"
"$PY" benchmarks/bench_setup.py
if [ "$QUICK" = 1 ]; then
    export BENCH_RESULTS_DIR=benchmarks/_work/results-quick   # a smoke run's figures are not results
    echo "== 1-2. scoring (quick)"
    "$PY" benchmarks/bench_scoring.py --models gpt2 --texts 32 --prompts 4 --blocks 2 --mm-tokens 512
    echo "== 3. make-ref memory (quick)"
    "$PY" benchmarks/bench_memory.py --reps 1 --shared 11
    echo "== 4. wrap (quick)"
    "$PY" benchmarks/bench_wrap.py --reps 1
    echo "== 5. start-up (quick)"
    "$PY" benchmarks/bench_startup.py --reps 1 --help-reps 3 --inputs 1
    "$PY" benchmarks/report.py --results "$BENCH_RESULTS_DIR" --out benchmarks/_work/RESULTS-quick.md --no-docs
else
    echo "== 1-2. scoring"
    "$PY" benchmarks/bench_scoring.py
    echo "== 3. make-ref memory"
    "$PY" benchmarks/bench_memory.py
    echo "== 4. wrap"
    "$PY" benchmarks/bench_wrap.py
    echo "== 5. start-up"
    "$PY" benchmarks/bench_startup.py
    "$PY" benchmarks/report.py
fi
echo "== 6. GPU script, CPU dry run (a check of gpu.py, not a result)"
"$PY" benchmarks/gpu.py --dry-run --out benchmarks/_work/gpu-dry-run > benchmarks/_work/gpu-dry-run.log 2>&1 \
    || echo "gpu.py --dry-run failed: see benchmarks/_work/gpu-dry-run.log"
echo "== done in $(( $(date +%s) - start )) s"
