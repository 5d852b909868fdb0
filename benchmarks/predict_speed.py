"""Benchmark: captchas per second read by ``simcaptcha predict`` end to end (target: >= 3,000 on 2 cores), and
seconds from starting the command to its first result (target: < 2 s).

Usage: python benchmarks/predict_speed.py [--model data/models/refined.safetensors] [--runs 2] [--batch-size 512]
Predicts the 3,000 embedded HackMIT sample captchas (challenge-17..19) ``--runs`` times: reading the challenge
files, decoding, binarizing, the reader and CSV formatting, all timed. Uses the trained refined reader when it
exists, else an untrained reader of the default params' size (same speed, meaningless predictions), and says
which. Then the same with the reader exported to ONNX and read by onnxruntime (``simcaptcha export``; skipped,
and said, without the onnx extra). The first result: ``simcaptcha predict`` started as a new process on one
challenge file, timed until its first row arrives, the best of ``--runs``. Writes the figures, with the CPU, to
metrics/bench-predict.json.
"""

import argparse
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simcaptcha.config import load_config
from simcaptcha.imaging import decode_set, detect_polarity, estimate_background
from simcaptcha.machine import available_cores, cpu_model
from simcaptcha.modelfile import ReaderSpec, save_reader
from simcaptcha.pipeline import METRICS
from simcaptcha.inference import export_onnx
from simcaptcha.predict import predict, read_inputs, write_csv
from simcaptcha.store import write_json

SAMPLES = [f"data/samples/hackmit2017/challenge-{number}" for number in (17, 18, 19)]
TRAINED = Path("data/models/refined.safetensors")


def untrained_reader(path: Path) -> ReaderSpec:
    """A reader of the params' size with the sample's own preprocessing, as train-classifier would save it."""
    params = load_config()
    height, width = params.binarize.size
    blobs, names = read_inputs(SAMPLES)
    pool = decode_set(blobs, names, height, width)
    polarity = detect_polarity(pool, params.binarize)
    background = estimate_background(pool, params.binarize.background)
    spec = ReaderSpec(params.render.charset, params.render.length[1], params.classifier.head,
                      tuple(params.classifier.channels), height, width, params.binarize, polarity)
    torch.manual_seed(0)
    save_reader(path, spec.build(), spec, background)
    return spec


def timed_runs(model: Path, runs: int, batch_size: int) -> dict:
    """``runs`` timed predictions of the samples, and their median captchas per second."""
    timings = []
    for run in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        count = write_csv(predict(model, SAMPLES, batch_size), io.StringIO())
        seconds = time.perf_counter() - start
        timings.append({"captchas": count, "seconds": round(seconds, 3), "per_second": round(count / seconds),
                        "cpu_per_wall": round((time.process_time() - cpu) / seconds, 2)})
        print(f"run {run + 1}: {count} captchas in {seconds:.2f} s = {count / seconds:,.0f} captchas/s "
              f"(process CPU time / wall time {timings[-1]['cpu_per_wall']:.2f})")
    return {"runs": timings, "per_second": round(float(np.median([timing["per_second"] for timing in timings])))}


def first_row_seconds(model: Path, runs: int) -> float:
    """Seconds from starting ``simcaptcha predict`` to its first result row (the header is the line before it),
    the best of ``runs`` starts."""
    command = [str(Path(sys.executable).with_name("simcaptcha")), "predict", "--model", str(model), SAMPLES[0]]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
            process.stdout.readline()
            process.stdout.readline()
            times.append(time.perf_counter() - start)
            process.kill()
    return round(min(times), 2)


def measure(model: Path, runs: int, batch_size: int) -> dict:
    figures = timed_runs(model, runs, batch_size)
    print(f"median: {figures['per_second']:,} captchas/s")
    figures["first_row_seconds"] = first_row_seconds(model, runs)
    print(f"first result {figures['first_row_seconds']} s after the start")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=TRAINED)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model.exists():
            kind = "trained"
        else:
            model = Path(scratch) / "untrained.safetensors"
            spec = untrained_reader(model)
            kind = f"untrained, channels {list(spec.channels)} ({args.model} does not exist)"
        print(f"model: {model} ({kind})")
        figures = {"model": str(args.model), "kind": kind, "batch_size": args.batch_size, "cpu": cpu_model(),
                   "cores": available_cores(), "load_average_before": round(os.getloadavg()[0], 2)}
        figures.update(measure(model, args.runs, args.batch_size))
        if all(importlib.util.find_spec(package) for package in ("onnx", "onnxruntime")):
            export_onnx(model, Path(scratch) / "reader.onnx")
            print("the same reader exported to ONNX, read by onnxruntime:")
            figures["onnx"] = measure(Path(scratch) / "reader.onnx", args.runs, args.batch_size)
        else:
            print("onnx: skipped (pip install 'simcaptcha[onnx]' to measure it)")
    figures["load_average_after"] = round(os.getloadavg()[0], 2)
    print(f"load average {figures['load_average_before']} before, {figures['load_average_after']} after "
          f"(other processes share the cores when it is above ~0.5)")
    write_json(METRICS / "bench-predict.json", figures)


if __name__ == "__main__":
    main()
