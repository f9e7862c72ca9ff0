#!/usr/bin/env bash
# The GPU work of issue #16 in ONE device call: a CUDA machine's whole session, prepared on the CPU.
#
# 1. Here, with network (once; trl 1.12.0 + datasets, dill, multiprocess as wheels into .whl/):
#        bash benchmarks/gpu_wheels.sh
# 2. The device call (the `run` tool of this workplace), from the repo root:
#        carry:     [".whl"]
#        timeout_s: 600
#        command:   VHCTL_COMMIT=<git rev-parse HEAD here> bash benchmarks/gpu_check.sh
#    It takes about 6 minutes (hard cap TOTAL_S=480 s of its own, well inside the 600 s limit) and
#    writes 5 files under $OUT: gpu.json + gpu.md (benchmarks/gpu.py), gpu-check.json + gpu-check.md
#    (every step's status) and gpu-check.log (everything printed).
# 3. Here: copy gpu.json, gpu.md and gpu-check.json from the call's files_at into benchmarks/results/,
#        python benchmarks/report.py --gpu-only      # RESULTS.md's section 6 and its target rows
#    and commit them as they came back.
#
# CPU rehearsal (tiny sizes, CPU stand-ins for CUDA; a few minutes on 2 busy cores):
#        bash benchmarks/gpu_check.sh --dry-run [--out DIR]
#
# Steps, each under its own time limit (s), in this order; a failed step does not stop the next:
#   wheels 60      install .whl/*.whl into /tmp/site (pip --no-index --no-deps), PYTHONPATH=/tmp/site:repo
#   probe 60       versions, the GPU, `import trl.experimental.ppo`, nvidia-smi
#   pytest-gpu 150 (a) pytest -m gpu tests (tests/test_gpu.py and the gpu-marked tests elsewhere)
#   device-map 90  (b) vhctl score --device-map auto against --device cuda: values within bf16 noise
#   torchrun-1 60  (c) torchrun --nproc-per-node 1 -m vhctl score: the same bytes as a plain run
#   torchrun-2 60  (c') 2 ranks sharing the one GPU (--device cuda:0; gloo + NCCL group): the same bytes
#   gpu.py         (d) the benchmark, with what is left of TOTAL_S (it starts no new workload past
#                  --budget-s and writes its files after each one)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
DRY=0
OUT_DIR="${OUT:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT_DIR="$2"; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z "$OUT_DIR" ]]; then OUT_DIR="$ROOT/benchmarks/_work/gpu-check"; fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="${TMPDIR:-/tmp}/vhctl-gpu-check.$$"
rm -rf "$WORK" && mkdir -p "$WORK"
TOTAL_S="${TOTAL_S:-480}"
PY="${PYTHON:-python3}"
if [[ "$DRY" == 1 && -z "${PYTHON:-}" ]]; then  # the repo's venv (a worktree's: the main checkout's)
    COMMON="$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)"
    for candidate in "$ROOT/.venv/bin/python" "${COMMON%/.git}/.venv/bin/python"; do
        if [[ -x "$candidate" ]]; then PY="$candidate"; break; fi
    done
fi
export PY DRY WORK ROOT OUT_DIR TOTAL_S
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TRANSFORMERS_VERBOSITY=error TRL_EXPERIMENTAL_SILENCE=1 PYTHONWARNINGS=ignore HF_HUB_DISABLE_PROGRESS_BARS=1
if [[ "$DRY" == 1 ]]; then
    export DEV=cpu DEV0=cpu OMP_NUM_THREADS=1  # one thread everywhere: torchrun's ranks get one too
else
    export DEV=cuda DEV0=cuda:0
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

ts() { printf '[%s +%4ds]' "$(date +%H:%M:%S)" "$SECONDS"; }

# step NAME LIMIT_S FUNCTION: run FUNCTION (exported) under `timeout`; record status, seconds and
# the detail line the function wrote to $WORK/detail.NAME ("skipped: ..." there marks a skip).
step() {
    local name="$1" limit="$2" fn="$3" start=$SECONDS rc status detail
    echo "$(ts) == $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" bash -c "$fn" 2>&1
    rc=$?
    detail="$(cat "$WORK/detail.$name" 2>/dev/null || true)"
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then status="timeout"; detail="over ${limit}s. $detail"
    elif [[ "$detail" == skipped:* ]]; then status="skipped"; detail="${detail#skipped: }"
    elif [[ $rc -eq 0 ]]; then status="pass"
    else status="fail"; detail="exit $rc. $detail"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "${detail//$'\t'/ }" >>"$WORK/steps.tsv"
    echo "$(ts) == $name: $status${detail:+ ($detail)}"
}

do_wheels() {
    if [[ "$DRY" == 1 ]]; then echo "skipped: dry run (the venv's trl)" >"$WORK/detail.wheels"; return 0; fi
    shopt -s nullglob
    local wheels=(.whl/*.whl)
    if [[ ${#wheels[@]} -eq 0 ]]; then
        echo "no .whl/*.whl carried: run benchmarks/gpu_wheels.sh and carry .whl" >"$WORK/detail.wheels"
        return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" \
        && echo "installed ${wheels[*]##*/} into /tmp/site" >"$WORK/detail.wheels"
}

do_probe() {
    nvidia-smi 2>/dev/null || echo "(no nvidia-smi)"
    "$PY" - <<'PY'
import os, platform, sys
import torch, transformers
facts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"CUDA {torch.version.cuda}",
         f"transformers {transformers.__version__}"]
if torch.cuda.is_available():
    facts.append(f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
    facts.append(f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
elif os.environ["DRY"] != "1":
    facts.append("NO CUDA DEVICE")
try:
    import trl
    facts.append(f"trl {trl.__version__} from {os.path.dirname(trl.__file__)}")
    try:
        import trl.experimental.ppo  # noqa: F401
        facts.append("trl.experimental.ppo imports")
    except ImportError as exc:
        facts.append(f"trl.experimental.ppo does not import ({exc}); gpu.py loads its modeling file on its own")
except ImportError as exc:
    facts.append(f"trl does not import: {exc}")
import vhctl
facts.append(f"vhctl {vhctl.__version__} from {os.path.dirname(vhctl.__file__)}")
line = "; ".join(facts)
print(line)
open(os.path.join(os.environ["WORK"], "detail.probe"), "w").write(line + "\n")
sys.exit(1 if "NO CUDA DEVICE" in line else 0)
PY
}

do_pytest() {
    local paths="${PYTEST_PATHS:-tests}"
    [[ "$DRY" == 1 ]] && paths="${PYTEST_PATHS:-tests/test_gpu.py}"  # the CPU has no CUDA: collection only
    "$PY" -m pytest -m gpu $paths -q -p no:cacheprovider --continue-on-collection-errors \
        --junitxml "$WORK/pytest-gpu.xml"
    local rc=$?
    "$PY" - "$rc" <<'PY'
import os, sys, xml.etree.ElementTree as ET
rc = int(sys.argv[1])
path = os.path.join(os.environ["WORK"], "pytest-gpu.xml")
n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
if os.path.exists(path):
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in n:
            n[key] += int(suite.get(key, 0))
ran = n["tests"] - n["skipped"]
line = f"{ran} ran, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped (pytest exit {rc})"
if os.environ["DRY"] == "1" and ran == 0 and rc == 0:
    line = f"skipped: no CUDA on the dry run ({n['skipped']} gpu test(s) collected and skipped)"
elif ran == 0:
    line += "; no gpu test ran on CUDA"
    rc = rc or 1
open(os.path.join(os.environ["WORK"], "detail.pytest-gpu"), "w").write(line + "\n")
sys.exit(rc)
PY
}

# Inputs and a checkpoint for (b) and (c): vhctl:tiny with a seeded head; texts and best-of-4 pairs.
prepare_score() {
    "$PY" -m vhctl wrap vhctl:tiny --out "$WORK/ck" --init normal --seed 0 || return 1
    "$PY" - <<'PY'
import json, os, random
rng = random.Random(16)
words = "the a value model scores each answer to every prompt quickly and well but not always".split()
lines = []
for i in range(160):
    if i % 5 == 4:
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
        for _ in range(4):
            lines.append({"id": len(lines), "prompt": prompt,
                          "response": " " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 20)))})
    else:
        lines.append({"id": len(lines), "text": " ".join(rng.choice(words) for _ in range(rng.randint(1, 120)))})
with open(os.path.join(os.environ["WORK"], "in.jsonl"), "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
PY
}

score() {  # score OUTFILE ARGS...: vhctl score of the prepared input
    local out="$1"; shift
    "$PY" -m vhctl score "$WORK/ck" --input "$WORK/in.jsonl" "$@" >"$out"
}

do_device_map() {
    prepare_score || return 1
    score "$WORK/ref32.jsonl" --device "$DEV" --dtype float32 || return 1
    score "$WORK/plain.jsonl" --device "$DEV" --dtype bfloat16 || return 1
    score "$WORK/dmap.jsonl" --device-map auto --dtype bfloat16 || return 1
    "$PY" - <<'PY'
import json, os, sys
work = os.environ["WORK"]
def read(name):
    with open(os.path.join(work, name)) as f:
        return [json.loads(line) for line in f]
ref, plain, dmap = read("ref32.jsonl"), read("plain.jsonl"), read("dmap.jsonl")
same_ids = [r.get("id") for r in plain] == [r.get("id") for r in dmap] == [r.get("id") for r in ref]
noise = max(abs(a["value"] - b["value"]) for a, b in zip(plain, ref))
d = max(abs(a["value"] - b["value"]) for a, b in zip(dmap, plain))
ok = same_ids and len(dmap) == len(plain) > 0 and (d <= 2 * noise if noise > 0 else d == 0)
line = (f"{len(dmap)} lines; max |device-map - plain| = {d:.2e}, bf16 noise (plain bf16 vs fp32) {noise:.2e}, "
        f"ratio {d / noise if noise else 0:.2f} (limit 2); identical bytes: "
        f"{open(os.path.join(work, 'dmap.jsonl'), 'rb').read() == open(os.path.join(work, 'plain.jsonl'), 'rb').read()}")
print(line)
open(os.path.join(work, "detail.device-map"), "w").write(line + "\n")
sys.exit(0 if ok else 1)
PY
}

torchrun_vs_plain() {  # torchrun_vs_plain NAME NPROC DEVICE
    local name="$1" nproc="$2" device="$3"
    if [[ ! -s "$WORK/plain.jsonl" ]]; then
        echo "no plain run to compare with (device-map step failed)" >"$WORK/detail.$name"; return 1
    fi
    NCCL_DEBUG=INFO "$PY" -m torch.distributed.run --standalone --nproc-per-node "$nproc" -m vhctl score \
        "$WORK/ck" --input "$WORK/in.jsonl" --device "$device" --dtype bfloat16 \
        >"$WORK/$name.jsonl" 2>"$WORK/$name.err"
    local rc=$?
    tail -n 5 "$WORK/$name.err"
    local nccl
    nccl=$(grep -c "NCCL INFO" "$WORK/$name.err")
    local same="differ"
    cmp -s "$WORK/plain.jsonl" "$WORK/$name.jsonl" && same="same bytes"
    echo "$nproc rank(s) on $device: exit $rc, output vs plain run: $same; NCCL INFO lines: $nccl" \
        "$([[ $nproc == 1 ]] && echo '(WORLD_SIZE=1: vhctl runs its single-process path, no process group)')" \
        >"$WORK/detail.$name"
    [[ $rc -eq 0 && "$same" == "same bytes" ]]
}
do_torchrun_1() { torchrun_vs_plain torchrun-1 1 "$DEV"; }
do_torchrun_2() { torchrun_vs_plain torchrun-2 2 "$DEV0"; }

do_gpu_py() {
    local left=$((TOTAL_S - SECONDS_AT_START - 15))
    local args=(--out "$OUT_DIR" --budget-s $((left > 120 ? left - 90 : 30)))
    [[ "$DRY" == 1 ]] && args=(--dry-run --out "$OUT_DIR")
    "$PY" benchmarks/gpu.py "${args[@]}"
    local rc=$?
    "$PY" - "$rc" <<'PY'
import json, os, sys
rc = int(sys.argv[1])
path = os.path.join(os.environ["OUT_DIR"], "gpu.json")
if not os.path.exists(path):
    line = f"gpu.py wrote no gpu.json (exit {rc})"
else:
    res = json.load(open(path))
    failed = [c["name"] for c in res["checks"] if not c["ok"]]
    met = sum(t["verdict"] == "met" for t in res["targets"])
    line = (f"exit {rc}; baseline {res['baseline']['label']}; status {res['status']}; {len(res['checks'])} checks, "
            f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; targets met {met}/{len(res['targets'])}")
open(os.path.join(os.environ["WORK"], "detail.gpu.py"), "w").write(line + "\n")
PY
    return $rc
}
export -f ts do_wheels do_probe do_pytest prepare_score score do_device_map torchrun_vs_plain do_torchrun_1 \
    do_torchrun_2 do_gpu_py

summarize() {
    "$PY" - <<'PY'
import json, os, sys, time
sys.path.insert(0, os.path.join(os.environ["ROOT"], "benchmarks"))
import gpu  # its code fingerprint and commit; no torch at import
work, out = os.environ["WORK"], os.environ["OUT_DIR"]
steps = []
for line in open(os.path.join(work, "steps.tsv")):
    name, status, secs, detail = line.rstrip("\n").split("\t", 3)
    steps.append({"name": name, "status": status, "seconds": float(secs), "detail": detail})
probe = next((s["detail"] for s in steps if s["name"] == "probe"), "")
res = {"schema": "vhctl-gpu-check/1", "dry_run": os.environ["DRY"] == "1",
       "command": "bash benchmarks/gpu_check.sh" + (" --dry-run" if os.environ["DRY"] == "1" else ""),
       "created": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": gpu.git_commit(), "code_sha256": gpu.code_fingerprint(),
       "machine": {"probe": probe}, "steps": steps}
try:
    g = json.load(open(os.path.join(out, "gpu.json")))["machine"]
    res["machine"].update({k: g.get(k) for k in ("gpu", "torch", "cuda", "driver", "transformers", "trl")})
except (OSError, ValueError, KeyError):
    pass
json.dump(res, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)
md = ["# GPU check" + (" (DRY RUN on the CPU)" if res["dry_run"] else ""), "", probe, "",
      "| step | status | s | detail |", "| --- | --- | ---: | --- |"]
md += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['detail'].replace('|', chr(92) + '|')} |" for s in steps]
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(0 if all(s["status"] in ("pass", "skipped") for s in steps) else 1)
PY
}

main() {
    echo "$(ts) gpu_check.sh$([[ $DRY == 1 ]] && echo ' --dry-run'): repo $ROOT, out $OUT_DIR, python $PY, budget ${TOTAL_S}s"
    step wheels 60 do_wheels
    if [[ "$DRY" != 1 && -d /tmp/site ]]; then export PYTHONPATH="/tmp/site:$PYTHONPATH"; fi
    step probe 60 do_probe
    step pytest-gpu 150 do_pytest
    step device-map 90 do_device_map
    step torchrun-1 60 do_torchrun_1
    step torchrun-2 60 do_torchrun_2
    export SECONDS_AT_START=$SECONDS
    local left=$((TOTAL_S - SECONDS))
    if [[ "$DRY" == 1 ]]; then left=$((left > 300 ? left : 300)); fi
    step gpu.py "$((left > 60 ? left : 60))" do_gpu_py
    echo "$(ts) done; files in $OUT_DIR:"
    summarize
    local rc=$?
    ls -la "$OUT_DIR"
    rm -rf "$WORK"
    return $rc
}

main 2>&1 | tee "$OUT_DIR/gpu-check.log"
exit "${PIPESTATUS[0]}"
