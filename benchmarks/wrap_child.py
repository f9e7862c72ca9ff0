"""One whole-process "wrap" done another way (run by bench_wrap.py under /usr/bin/time -v).

python wrap_child.py trl SRC OUT          TRL: from_pretrained + save_pretrained
python wrap_child.py copy SRC OUT         the floor: copy the model folder, write a small head file
python wrap_child.py copy-fsync SRC OUT   the same, flushed to disk (vhctl wrap fsyncs what it writes)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def main() -> int:
    how, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if how == "trl":
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead

        model = AutoModelForCausalLMWithValueHead.from_pretrained(str(src))
        model.save_pretrained(str(out))
        return 0
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file():
            shutil.copyfile(path, out / path.name)
    hidden = 768
    save_file(
        {"v_head.summary.weight": torch.zeros(1, hidden), "v_head.summary.bias": torch.zeros(1)},
        str(out / "value_head.safetensors"),
        metadata={"format": "pt"},
    )
    if how == "copy-fsync":
        for path in out.iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
