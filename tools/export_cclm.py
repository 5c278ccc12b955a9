"""Write a checkpoint of this project as a CCLM-X2VLM pretrained checkpoint (that key layout).

    python -m tools.export_cclm --checkpoint runs/demo_stage1/checkpoint_last.pth --out runs/demo_stage1/cclm_demo.th

The result loads through ``model.resume`` exactly like ``cclm_x2vlm_base.th``: fusion
layers inside the text encoder (``text_encoder.encoder.layer.{text_fusion_start_at + i}``),
original BEiT-v2 vision names (ours already are), the state dict under ``'model'``.
The parameters a CCLM checkpoint does not have (``vision_encoder.mask_token``,
``mim_head``, ``tl_text_proj``, ``classifier``) and derived buffers are left out, so
the loader treats the file as it treats the real one. The two-stage demo uses it: a
first stage on the synthetic training split plays the role of pretraining.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.checkpoint import DERIVED_BUFFERS, FRESH_PREFIXES, upstream_name
from utils.checkpoint import CheckpointError, atomic_write, load_safe


def cclm_state(state: dict[str, torch.Tensor], fusion_start: int) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the CCLM-X2VLM layout, without the parameters CCLM lacks."""
    return {upstream_name(k, fusion_start): v for k, v in state.items()
            if not k.startswith(FRESH_PREFIXES) and not k.endswith(DERIVED_BUFFERS)}


def export(checkpoint: str, out: str) -> int:
    """Write ``out`` from ``checkpoint`` (a file saved by this project); returns the number of tensors."""
    obj = load_safe(checkpoint)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or not isinstance(obj.get("config"), dict):
        raise CheckpointError(f"{checkpoint}: not a Bi-IRRA checkpoint of this project (no 'model' and 'config')")
    state = cclm_state(obj["model"], int(obj["config"]["text_fusion_start_at"]))
    atomic_write(Path(out), lambda tmp: torch.save({"model": state}, tmp))
    return len(state)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.export_cclm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint_last.pth or best_<lang>.pth of a run")
    ap.add_argument("--out", required=True, help="the CCLM-layout file to write (use it as model.resume)")
    args = ap.parse_args(argv)
    n = export(args.checkpoint, args.out)
    print(f"wrote {args.out}: {n} tensors in the CCLM-X2VLM layout")


if __name__ == "__main__":
    main()
