"""Read text captchas with zero real labels: run the DVC pipeline on a target site, or read new captchas
with a trained reader."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

from .config import Config, RenderConfig, parse_section, read_yaml
from .errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, SimcaptchaError, run_main
from .store import write_bytes

EPILOG = f"""exit status:
  {EXIT_OK:<4} success
  {EXIT_ERROR:<4} an error in the data, params, input or output: one line "error: ..." on stderr; with
       predict --skip-bad, some inputs or images could not be read (the CSV is whole, their rows say why)
  {EXIT_USAGE:<4} a bad command line
  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C)
"""
_DELETE = object()  # a params key to remove: an entry of a mapping param, which has no default of its own


def _hydra_value(value: object) -> str:
    """Encode a params value in the override grammar ``dvc exp run -S`` accepts (strings always quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # Hydra's quoted strings: a backslash escapes only a quote, or the backslashes just before a quote or the
        # closing quote: any other backslash, a regex's \. say, stays as it is
        escaped = re.sub(r"(\\*)'", lambda match: match[1] * 2 + "\\'", value)
        return "'" + re.sub(r"(\\+)$", lambda match: match[1] * 2, escaped) + "'"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    raise SimcaptchaError(f"cannot pass {value!r} to dvc exp run -S")


def _flatten(overrides: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) for every leaf; an empty mapping (a section left at its defaults) has none."""
    pairs = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
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
    """``-S`` arguments that turn the workspace params into committed params + the target file.

    ``dvc exp run -S`` edits the workspace params.yaml, so a previous target's values would leak into the
    next run: every leaf that differs from the wanted value is set, not only those the target names, and a
    leaf the wanted params do not name goes back to its config.py default. ``++`` sets a key params.yaml
    does not have yet (it holds only what differs from the defaults).
    """
    return overrides_for(read_yaml(path) or {})  # read first: a wrong path is the error to report


def overrides_for(target: dict) -> list[str]:
    """``target_overrides`` for a target's params already read."""
    wanted_params = _deep_merge(committed_params(), target)
    parse_section(Config, wanted_params, "")
    current = dict(_flatten(read_yaml("params.yaml") or {}))
    defaults = dict(_flatten(dataclasses.asdict(Config())))
    wanted = {**{key: defaults.get(key, _DELETE) for key in current}, **dict(_flatten(wanted_params))}
    return [argument for key, value in wanted.items() if current.get(key, _DELETE) != value
            for argument in ("-S", f"~{key}" if value is _DELETE else f"++{key}={_hydra_value(value)}")]


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
    if args.dry_run:
        print(" ".join(command))
        return
    sys.exit(subprocess.call(command))


def command_site(args: argparse.Namespace) -> None:
    from .sites import SiteRequest, collect_results, parse_length, site_target, summary, target_text, training_machine

    request = SiteRequest(args.name, args.pool, args.labelled or [], args.labels or "", args.label_regex,
                          args.charset, parse_length(args.length) if args.length else None, args.case_insensitive)
    target, notes = site_target(request)
    text, path = target_text(request, target, notes), Path("targets") / f"{args.name}.yaml"
    # Up to evaluate: the label-budget grid asks what real labels would add, which a site's first run need not
    # answer, and costs minutes (dvc exp apply NAME, then dvc repro, runs it).
    command = ["dvc", "exp", "run", *overrides_for(target), "evaluate", "--name", args.name]
    print(training_machine())
    if args.dry_run:
        print(f"# {path}, not written (--dry-run)\n{text}{' '.join(command)}")
        return
    write_bytes(path, text.encode("utf-8"))
    print(f"wrote {path}")
    code = subprocess.call(command)
    if code != 0:
        sys.exit(code)
    print(summary(args.name, collect_results(args.name)))


def command_predict(args: argparse.Namespace) -> None:
    from .predict import write_predictions  # torch is slow to import: only predict and export pay for it

    write_predictions(args.model, args.inputs, args.batch_size, args.output, args.skip_bad, args.min_confidence)


def command_export(args: argparse.Namespace) -> None:
    from .inference import export_onnx

    export_onnx(args.model, args.onnx)


def command_models(args: argparse.Namespace) -> None:
    from .bundled import models_listing

    sys.stdout.write(models_listing())


def positive_int(text: str) -> int:
    """An argparse type, so that a bad number is a usage error like any other bad argument."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def probability(text: str) -> float:
    """An argparse type for a probability, 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simcaptcha", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('simcaptcha')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    target = commands.add_parser("target", help="run the pipeline on a target: dvc exp run with a file's params",
                                 description="Run the pipeline as a DVC experiment whose params are the committed "
                                             "params.yaml with the target file's values on top; values an earlier "
                                             "experiment left in the workspace params.yaml are reset.")
    target.add_argument("file", help="YAML file of params overrides, e.g. targets/kaggle.yaml")
    target.add_argument("stages", nargs="*", default=[],  # a default, or argparse calls it required in errors
                        help="run only up to these stages (default: the whole pipeline)")
    target.add_argument("--name", help="experiment name")
    target.add_argument("--queue", action="store_true", help="queue the experiment (run with dvc queue start)")
    target.add_argument("--dry-run", action="store_true", help="print the dvc command instead of running it")
    target.set_defaults(handler=command_target)
    site = commands.add_parser("site", help="a new site in one command: measure, write its target, run it",
                               description="Measure what the pool and the labels' format say (working size, "
                                           "length, head), write targets/NAME.yaml with a comment per measured "
                                           "value, run it as the DVC experiment NAME, and leave the final reader "
                                           "and its figures under sites/NAME/. No real label trains anything.")
    site.add_argument("name", help="the site's name: targets/NAME.yaml, sites/NAME/, experiment NAME")
    site.add_argument("--pool", nargs="+", required=True, metavar="SRC",
                      help="unlabelled captchas: image files, folders, zip/tar, challenge JSON; paths or URLs")
    site.add_argument("--labelled", nargs="+", metavar="SRC", help="labelled captchas, to measure the reader on")
    site.add_argument("--labels", metavar="FORMAT", help="how the labelled ones are labelled: filename, csv:PATH (name,label "
                                                            "rows) or json:PATH (an object name: label)")
    site.add_argument("--label-regex", metavar="RE", help="with --labels filename: the label is RE's first group "
                                                           "in the file name (default: up to the first . or _)")
    site.add_argument("--charset", default=RenderConfig.charset,
                      help=f"the characters drawn (default {RenderConfig.charset})")
    site.add_argument("--length", metavar="N|MIN-MAX",
                      help="characters per captcha (default: the labels' lengths; needed without labels)")
    site.add_argument("--case-insensitive", action="store_true",
                      help="the site draws letters in either case but its labels do not tell them apart: give "
                           "--charset in one case; readings and labels are compared in it")
    site.add_argument("--dry-run", action="store_true",
                      help="measure and print the target and the dvc command; write and run nothing")
    site.set_defaults(handler=command_site)
    predict = commands.add_parser("predict", help="read captchas with a trained reader file into a CSV",
                                  description="Write name,prediction,confidence CSV for every image of the "
                                              "inputs, in input order; preprocessing comes from the model file.")
    predict.add_argument("--model", required=True,
                         help="reader file, e.g. data/models/selftrained.safetensors, its ONNX export (.onnx: needs "
                              "pip install 'simcaptcha[onnx]'), or the name of a bundled reader (simcaptcha models)")
    predict.add_argument("--batch-size", type=positive_int, default=512,
                         help="images decoded and read at a time (512)")
    predict.add_argument("-o", "--output", metavar="FILE",
                         help="write the CSV to FILE, whole or not at all (default and -: stdout)")
    predict.add_argument("--skip-bad", action="store_true",
                         help="an input or image that cannot be read gets a row with an empty reading, confidence "
                              "0 and the reason in a fourth column, error, and the rest is read (exit status 1 if "
                              "any failed); without it the first stops the run")
    predict.add_argument("--min-confidence", type=probability, metavar="P",
                         help="leave a reading empty where its confidence (the probability that the whole reading "
                              "is right) is below P, and mark its row yes in a column abstained")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image file, folder, zip/tar archive or challenge JSON; path or http(s) URL")
    predict.set_defaults(handler=command_predict)
    export = commands.add_parser("export", help="write a reader file as an ONNX model for other runtimes",
                                 description="Export a reader file to an ONNX graph (opset 17, any batch size) with "
                                             "its preprocessing in the model's metadata; predict --model FILE.onnx "
                                             "reads with it through onnxruntime.")
    export.add_argument("--model", required=True,
                        help="reader file, e.g. data/models/selftrained.safetensors, or a bundled reader's name")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write, whole or not at all")
    export.set_defaults(handler=command_export)
    models = commands.add_parser("models", help="list the readers bundled with the package, with their figures",
                                 description="The readers that ship inside the package (trained with zero real "
                                             "labels), how well each read its site's labelled captchas, and the "
                                             "command that rebuilds each.")
    models.set_defaults(handler=command_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_main(lambda: args.handler(args))


if __name__ == "__main__":
    main()
