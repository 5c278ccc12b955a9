"""Bi-IRRA command line: train, evaluate or check a configuration.

    python main.py [--config config/config.yaml] [key.sub=value ...] [--check]
    torchrun --nproc_per_node=4 main.py [--config config/config.yaml]
    python main.py --eval-only --resume runs/x/best_en.pth [--config FILE] [key.sub=value ...]

Without ``--config`` the run reads ``config/config.yaml`` of the current folder, as
upstream's ``main.py`` does (with ``--resume``: the config stored in the checkpoint).

Input problems (config, data, checkpoints) end the run with one ``error:`` line and
exit code 2; a failed training run (e.g. a non-finite loss) exits with 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from utils.config import Config

DEFAULT_CONFIG = "config/config.yaml"  # upstream's main.py reads this file, relative to the working folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train and evaluate Bi-IRRA for multilingual text-to-image person retrieval.")
    p.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG} in the current folder, as upstream; "
                                    "with --resume: the config stored in the checkpoint)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config keys")
    p.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint on the test split")
    p.add_argument("--resume", help="checkpoint of this project: continue training from it, or evaluate it")
    p.add_argument("--check", action="store_true",
                   help="load and validate everything the run would read (config, annotation files, images, "
                        "tokenizer), print the config and per-split counts, exit")
    args = p.parse_args(argv)
    if args.eval_only and not args.resume:
        p.error("--eval-only needs --resume CHECKPOINT")
    return args


def resolve_config(args: argparse.Namespace):
    from utils.checkpoint import load_safe
    from utils.config import ConfigError, apply_override, config_from_dict, load_config

    if args.config is not None:
        return load_config(args.config, args.overrides)
    if args.resume is None:
        if not os.path.isfile(DEFAULT_CONFIG):
            raise ConfigError(f"config file not found: {DEFAULT_CONFIG} (read when --config is not given; "
                              f"run from the repository root or pass --config FILE)")
        return load_config(DEFAULT_CONFIG, args.overrides)
    ckpt = load_safe(args.resume)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ConfigError(f"{args.resume}: stores no config; pass --config")
    raw = ckpt["config"]
    for ov in args.overrides:
        apply_override(raw, ov)
    return config_from_dict(raw, source=f"{args.resume} (stored config)")


def check(cfg: Config, need_train: bool) -> int:
    """``--check``: everything the run would load, validated; the run card, the config and
    per-split counts printed."""
    import torch

    from data.audit import audit, format_audit
    from data.check import check_data, format_summary
    from engine.eval_memory import report as memory_report
    from engine.run_card import build_card, probe, to_markdown
    from engine.step import check_compile
    from utils.config import check_paths

    check_paths(cfg, need_train=need_train)
    device = "cuda" if str(cfg.device) != "cpu" and torch.cuda.is_available() else "cpu"
    if need_train:
        check_compile(cfg, device)
    summary = check_data(cfg, need_train=need_train)
    print(to_markdown(build_card(cfg, int(os.environ.get("WORLD_SIZE", "1")), device, summary, probe(cfg))))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")
    print(format_summary(summary))
    print(format_audit(audit(cfg, [(r.split, r.lang) for r in summary])))  # warnings only, never fatal
    print(memory_report(cfg))
    print(f"config OK: {cfg.source}")
    return 0


def run(args: argparse.Namespace) -> int:
    from utils.config import check_paths
    from utils.distributed import init_distributed

    cfg = resolve_config(args)
    if args.eval_only:
        cfg.model.resume = ""  # the fine-tuned weights replace the pretrained ones anyway
    if args.check:
        return check(cfg, need_train=not args.eval_only)
    check_paths(cfg, need_train=not args.eval_only)
    info = init_distributed(cfg.device, cfg.distributed.backend)
    from engine.train import Trainer

    trainer = Trainer(cfg, info)
    try:
        if args.eval_only:
            trainer.evaluate_checkpoint(args.resume)
        else:
            trainer.train(resume=args.resume)
    finally:
        trainer.log.close()  # flushes the TensorBoard events, also of a failed run
    return 0


def one_line(e: BaseException) -> str:
    """The error's own message, also when a DataLoader worker re-raised it with its traceback."""
    text = str(e).strip()
    if "Original Traceback" in text:  # "Caught X in DataLoader worker ...\nOriginal Traceback ...\nmod.X: msg"
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run and map failures to exit codes; input errors become one ``error:`` line."""
    from utils.errors import InputError, TrainingError

    args = parse_args(argv)
    code = 0
    try:
        code = run(args)
    except InputError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        code = 2
    except TrainingError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception:  # noqa: BLE001 - report, then shut the process group down cleanly
        traceback.print_exc()
        code = 1
    return code


if __name__ == "__main__":
    from utils.distributed import cleanup_and_exit

    cleanup_and_exit(main())
