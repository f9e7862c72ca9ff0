#!/usr/bin/env bash
# Download trl==1.12.0 and the pure-Python packages it needs that the GPU machine's image lacks, as
# wheels, into the gitignored folder .whl/ at the repo root. The GPU machine has no network: a device
# run carries .whl (`carry: [".whl"]`) and benchmarks/gpu_check.sh installs these wheels with
#     python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# and puts /tmp/site first on PYTHONPATH, so benchmarks/gpu.py's baseline is TRL's own class.
#
#     bash benchmarks/gpu_wheels.sh            # here, with network to the package registry
#     bash benchmarks/gpu_wheels.sh --list     # print the resolved set, download nothing
#
# The set is computed, not typed: start from trl==1.12.0, read each wheel's Requires-Dist (markers
# evaluated for CPython 3.12 on x86-64 Linux, extras skipped), and follow every requirement that the
# image does not already hold (IMAGE_PACKAGES below: the packages the GPU machines' 'cuda' image
# ships, as its provider listed them on 2026-11-17). A package's version is the one installed in this
# repo's .venv when it satisfies the requirement (the combination the test suite runs trl with),
# else the newest that pip finds for the requirement. One version of each: .whl/*.whl is emptied first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then  # the repo's .venv (a git worktree's: the main checkout's), else python3
    COMMON="$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)"
    for candidate in "$ROOT/.venv/bin/python" "${COMMON%/.git}/.venv/bin/python"; do
        if [[ -x "$candidate" ]]; then PYTHON="$candidate"; break; fi
    done
    PYTHON="${PYTHON:-python3}"
fi
LIST_ONLY=0
[[ "${1:-}" == "--list" ]] && LIST_ONLY=1

IMAGE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp"

mkdir -p "$DEST"
export DEST LIST_ONLY IMAGE_PACKAGES
"$PYTHON" - <<'PY'
"""Resolve trl==1.12.0's missing requirements against the image's package list; download the wheels."""
import glob
import importlib.metadata as md
import os
import subprocess
import sys
import tempfile
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DEST = os.environ["DEST"]
LIST_ONLY = os.environ["LIST_ONLY"] == "1"
IMAGE = {canonicalize_name(n) for n in os.environ["IMAGE_PACKAGES"].split()}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PIP = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
       "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
       "--quiet", "--disable-pip-version-check"]


def pin(req: Requirement) -> str:
    """The venv's version when it satisfies the requirement, else the requirement itself."""
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        have = None
    if have is not None and req.specifier.contains(have, prereleases=True):
        return f"{req.name}=={have}"
    return f"{req.name}{req.specifier}"


def requires(wheel: str) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8")
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(TARGET):
                out.append(req)
    return out


with tempfile.TemporaryDirectory() as tmp:
    queue, seen, plan = [Requirement("trl==1.12.0")], set(), []
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        spec = "trl==1.12.0" if name == "trl" else pin(req)
        if subprocess.run([*PIP, "-d", tmp, spec]).returncode != 0:
            sys.exit(f"gpu_wheels: pip could not download {spec} (see above); .whl/ left as it was")
        wheel = next(w for w in glob.glob(os.path.join(tmp, "*.whl"))
                     if canonicalize_name(os.path.basename(w).split("-")[0]) == name)
        plan.append((spec, os.path.basename(wheel)))
        for sub in requires(wheel):
            sub_name = canonicalize_name(sub.name)
            if sub_name in IMAGE:
                print(f"  {spec}: needs {sub} -- on the image")
            elif sub_name not in seen:
                print(f"  {spec}: needs {sub} -- to carry ({pin(sub)})")
                queue.append(sub)
    for _, wheel in plan:
        if "-none-any" not in wheel:
            sys.exit(f"{wheel} is not a pure-Python wheel: check that it fits the GPU machine's Python 3.12")
    print("to carry:", ", ".join(w for _, w in plan))
    if not LIST_ONLY:
        for old in glob.glob(os.path.join(DEST, "*.whl")):
            os.remove(old)
        for _, wheel in plan:
            os.replace(os.path.join(tmp, wheel), os.path.join(DEST, wheel))
        size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(DEST, "*.whl")))
        print(f"{len(plan)} wheel(s), {size / 2**20:.1f} MiB in {DEST}")
PY
