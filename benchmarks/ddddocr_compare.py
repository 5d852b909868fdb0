"""Benchmark: the pretrained off-the-shelf reader ddddocr 1.6.1 beside this project's reader, same real captchas.

Usage: python benchmarks/ddddocr_compare.py [--project .] [--model PROJECT/data/models/selftrained.safetensors]
                                            [--out PROJECT/metrics/ddddocr.json] [--beta]
Target: the pipeline's reader well above ddddocr, which reads HackMIT 2017 at about 8.2% whole / 38.8% per
character (ddddocr needs the bench extra: pip install -e '.[bench]').
Both readers get exactly the same encoded bytes, the labelled set the fetch stage wrote under
PROJECT/data/fetched/labelled: ddddocr through ``DdddOcr.classification`` (its default model; ``--beta`` for
its beta model), ours through ``Predictor.preprocess`` and ``Predictor.read`` (the preprocessing the model
file describes). The labelled captchas our reader was trained on (its spec's ``trained_on_real``) are skipped
for both. Accuracy is ``simcaptcha.metrics.accuracy_figures``: per character, position by position (a missing
character is wrong), and whole captchas, exact match. When every label is lower-case, ddddocr's output is
lower-cased before comparing (it reads a mixed-case charset, and may answer "B" for "b"); with
``--case-insensitive`` (a site that draws either case and labels in one) labels and both readers' output are;
other output (Chinese characters, say) is compared as it is. Images/s: decoding, preprocessing and reading, one warm-up
image first, not timed. Prints a table and writes the figures to --out.
"""

import argparse
import os
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.machine import available_cores
from simcaptcha.metrics import accuracy_figures
from simcaptcha.predict import Predictor
from simcaptcha.store import read_encoded_set, write_json

LABELLED = Path("data/fetched/labelled")
MODEL = Path("data/models/selftrained.safetensors")
OUT = Path("metrics/ddddocr.json")
NOT_INSTALLED = "ddddocr is not installed: pip install -e '.[bench]'"


def load_ddddocr(beta: bool):
    """ddddocr's OCR reader, without its advertising banner; a one-line error when it is not installed."""
    try:
        import ddddocr
    except ImportError:
        raise SimcaptchaError(NOT_INSTALLED) from None
    return ddddocr.DdddOcr(show_ad=False, beta=beta)


def untrained_rows(names: Sequence[str], trained_on: Sequence[str]) -> list[int]:
    """Indices of the captchas a reader was not trained on, in order."""
    trained = set(trained_on)
    return [row for row, name in enumerate(names) if name not in trained]


def fold_case(predicted: list[str], truth: list[str], case_insensitive: bool) -> tuple[list[str], bool]:
    """Predictions lower-cased when every label is lower-case or the site is read case-insensitively (and whether
    they were); else as they are."""
    if case_insensitive or all(label == label.lower() for label in truth):
        return [text.lower() for text in predicted], True
    return predicted, False


def reader_figures(predicted: list[str], truth: list[str], seconds: float) -> dict:
    """Count, per-character, whole, per-position and presence accuracy, and images read per second."""
    return {**accuracy_figures(predicted, truth), "seconds": round(seconds, 3),
            "images_per_second": round(len(truth) / seconds, 1) if seconds > 0 else None}


def timed(read: Callable[[list[bytes]], list[str]], blobs: list[bytes]) -> tuple[list[str], float]:
    """``read(blobs)`` after one untimed warm-up image: the texts and the seconds they took."""
    read(blobs[:1])
    start = time.perf_counter()
    texts = read(blobs)
    return texts, time.perf_counter() - start


def read_ours(predictor: Predictor, names: list[str]) -> Callable[[list[bytes]], list[str]]:
    def read(blobs: list[bytes]) -> list[str]:
        return predictor.read(predictor.preprocess(blobs, names[:len(blobs)]))[0]
    return read


def read_ddddocr(ocr) -> Callable[[list[bytes]], list[str]]:
    def read(blobs: list[bytes]) -> list[str]:
        return [ocr.classification(blob) for blob in blobs]
    return read


def table(rows: dict[str, dict]) -> str:
    """reader | per character | whole | images/s, one line a reader."""
    lines = [f"{'reader':<16} {'per char':>9} {'whole':>8} {'images/s':>10}"]
    for name, figures in rows.items():
        speed = figures["images_per_second"]
        lines.append(f"{name:<16} {figures['char_accuracy']:>9.2%} {figures['captcha_accuracy']:>8.2%} "
                     f"{'-' if speed is None else f'{speed:,.0f}':>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--model", type=Path, help=f"default: PROJECT/{MODEL}")
    parser.add_argument("--out", type=Path, help=f"default: PROJECT/{OUT}")
    parser.add_argument("--beta", action="store_true", help="ddddocr's beta model instead of its default one")
    parser.add_argument("--case-insensitive", action="store_true",
                        help="compare in lower case: a site that draws either case and labels in one (site's flag)")
    args = parser.parse_args()
    model, out = args.model or args.project / MODEL, args.out or args.project / OUT
    ocr = load_ddddocr(args.beta)
    predictor = Predictor(model)
    blobs, manifest = read_encoded_set(args.project / LABELLED)
    names, labels = manifest["name"].tolist(), manifest["label"].tolist()
    rows = untrained_rows(names, predictor.spec.trained_on_real)
    if not rows:
        raise SimcaptchaError(f"{model}: it was trained on all {len(names)} labelled captchas; none is left to read")
    blobs, names, truth = [blobs[r] for r in rows], [names[r] for r in rows], [labels[r] for r in rows]
    if args.case_insensitive:
        truth = [label.lower() for label in truth]
    skipped = len(labels) - len(truth)
    print(f"{len(truth)} labelled captchas from {args.project / LABELLED}"
          + (f" ({skipped} skipped: {model.name} was trained on them)" if skipped else "")
          + f"; {available_cores()} cores")

    ours, seconds = timed(read_ours(predictor, names), blobs)
    theirs, their_seconds = timed(read_ddddocr(ocr), blobs)
    theirs, folded = fold_case(theirs, truth, args.case_insensitive)
    ours, _ = fold_case(ours, truth, args.case_insensitive)
    results = {
        model.stem: {**reader_figures(ours, truth, seconds), "model": str(model),
                     "real_labels_used": len(predictor.spec.trained_on_real)},
        "ddddocr": {**reader_figures(theirs, truth, their_seconds), "version": metadata.version("ddddocr"),
                    "model": "beta" if args.beta else "default", "lower_cased": folded},
    }
    print(table(results))
    if folded:
        print("(readings lower-cased: " + ("the site is read case-insensitively)" if args.case_insensitive
                                              else "every label is lower-case)"))
    write_json(out, {"labelled": str(args.project / LABELLED), "count": len(truth),
                     "skipped_trained_on": skipped, "cores": available_cores(),
                     "load_average": round(os.getloadavg()[0], 2), "readers": results})
    print(f"figures: {out}")


if __name__ == "__main__":
    run_main(main)
