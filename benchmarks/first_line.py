"""Start-up to the first output line, done two other ways (run by bench_startup.py).

    python first_line.py trl BASE CKPT INPUT     TRL: import, load model + tokenizer, first forward, print
    python first_line.py vhctl-lib CKPT INPUT    the library path of ``vhctl score`` in a plain script

TRL's first forward is its first batch of 16 lines of INPUT (JSON lines with "text"), as a TRL user's
scoring loop does; the first value is printed as a JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    how = sys.argv[1]
    if how == "trl":
        import torch
        from safetensors.torch import load_file
        from transformers import AutoTokenizer
        from trl.experimental.ppo import AutoModelForCausalLMWithValueHead

        base, ckpt, data = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
        model = AutoModelForCausalLMWithValueHead.from_pretrained(str(base))
        head = load_file(str(ckpt / "value_head.safetensors"))
        model.v_head.summary.weight.data.copy_(head["v_head.summary.weight"])
        model.v_head.summary.bias.data.copy_(head["v_head.summary.bias"])
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        texts = [json.loads(line)["text"] for line in data.read_text().splitlines()[:16]]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            _, _, values = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        last = enc["attention_mask"].sum(1) - 1
        print(json.dumps({"value": values[0, last[0]].item()}), flush=True)
        return 0
    from transformers import AutoTokenizer

    from vhctl.io.records import iter_records
    from vhctl.modeling import load_checkpoint
    from vhctl.scoring import Scorer

    ckpt, data = Path(sys.argv[2]), Path(sys.argv[3])
    model = load_checkpoint(str(ckpt))
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    with open(data, "rb") as handle:
        for result in Scorer(model, tokenizer, batch_size=16).score(iter_records(handle)):
            print(json.dumps(result), flush=True)
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
