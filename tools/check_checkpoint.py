"""Check that ``model.resume`` loads into the configured model before spending GPU time.

    python -m tools.check_checkpoint --config FILE [key=value ...]

Prints the load report and parameter counts. Exit 0 when nothing but the parameters a
pretrained checkpoint cannot hold (mask_token, mim_head, tl_text_proj when not copied,
optional heads) is missing; 1 when other parameters stay fresh; 2 on a configuration or
checkpoint error (one ``error: ...`` line on stderr).
"""
from __future__ import annotations

import argparse
import sys

from torch import nn

from model.bi_irra import BiIRRA
from model.checkpoint import CheckpointError, load_pretrained
from utils.config import ConfigError, load_config


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_table(model: BiIRRA) -> str:
    """Parameters per top-level part (shared tensors counted once, in the total)."""
    rows = [(name, count(child)) for name, child in model.named_children()]
    own = sum(p.numel() for n, p in model.named_parameters(recurse=False))
    if own:
        rows.append(("(top-level: temp)", own))
    rows.append(("total", count(model)))
    return "\n".join(f"  {name:<24}{n:>14,}" for name, n in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.check_checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if not cfg.model.resume:
            raise ConfigError(f"{cfg.source}: key 'model.resume' is empty; nothing to check")
        model = BiIRRA.from_config(cfg)
        report = load_pretrained(model, cfg.model.resume)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint: {cfg.model.resume}")
    print(report.summary())
    print("parameters:")
    print(parameter_table(model))
    bad = report.unexpected_missing()
    if bad:
        print(f"FAIL: {len(bad)} parameters are not in the checkpoint and would train from scratch: "
              f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
        return 1
    print("OK: only the expected fresh parameters are missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
