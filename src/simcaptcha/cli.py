"""The ``simcaptcha`` command: what users run by hand beside ``dvc repro``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from .config import Config, parse_section, read_yaml
from .errors import SimcaptchaError, run_main


def _hydra_value(value: object) -> str:
    """Encode a params value in the override grammar ``dvc exp run -S`` accepts (strings always quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    raise SimcaptchaError(f"cannot pass {value!r} to dvc exp run -S")


def _flatten(overrides: dict, prefix: str = "") -> list[tuple[str, object]]:
    pairs = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            pairs.extend(_flatten(value, path + "."))
        else:
            pairs.append((path, value))
    return pairs


def committed_params() -> dict:
    """params.yaml as committed at HEAD: the base every target applies to, whatever ran last."""
    result = subprocess.run(["git", "show", "HEAD:params.yaml"], capture_output=True, text=True)
    if result.returncode != 0:
        return read_yaml("params.yaml") or {}
    return yaml.safe_load(result.stdout) or {}


def target_overrides(path: str | Path) -> list[str]:
    """``-S key=value`` arguments that turn the workspace params into committed params + the target file.

    ``dvc exp run -S`` edits the workspace params.yaml, so a previous target's values would leak into the
    next run; every leaf that differs from the wanted value is set, not only those the target names.
    """
    wanted = _deep_merge(committed_params(), read_yaml(path) or {})
    parse_section(Config, wanted, "")
    current = dict(_flatten(read_yaml("params.yaml") or {}))
    return [argument for key, value in _flatten(wanted) if current.get(key, object()) != value
            for argument in ("-S", f"{key}={_hydra_value(value)}")]


def _deep_merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def command_target(args: argparse.Namespace) -> None:
    command = ["dvc", "exp", "run", *target_overrides(args.file), *args.stages]
    if args.name:
        command += ["--name", args.name]
    if args.queue:
        command.append("--queue")
    if args.dry:
        print(" ".join(command))
        return
    sys.exit(subprocess.call(command))


def command_predict(args: argparse.Namespace) -> None:
    from .predict import write_predictions  # torch is slow to import: only predict pays for it

    write_predictions(args.model, args.inputs, args.batch_size, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simcaptcha", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    target = commands.add_parser("target", help="run the pipeline on a target: dvc exp run with a file's params")
    target.add_argument("file", help="YAML file of params overrides, e.g. targets/kaggle.yaml")
    target.add_argument("stages", nargs="*", help="run only up to these stages (default: the whole pipeline)")
    target.add_argument("--name", help="experiment name")
    target.add_argument("--queue", action="store_true", help="queue the experiment (run with dvc queue start)")
    target.add_argument("--dry", action="store_true", help="print the dvc command instead of running it")
    target.set_defaults(handler=command_target)
    predict = commands.add_parser("predict", help="read captchas with a trained reader file: CSV on stdout",
                                  description="Write name,prediction,confidence CSV for every image of the "
                                              "inputs, in input order; preprocessing comes from the model file.")
    predict.add_argument("--model", required=True, help="reader file, e.g. data/models/refined.safetensors")
    predict.add_argument("--batch-size", type=int, default=512, help="images decoded and read at a time (512)")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image file, folder, zip/tar archive or challenge JSON; path or http(s) URL")
    predict.set_defaults(handler=command_predict)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: args.handler(args))
