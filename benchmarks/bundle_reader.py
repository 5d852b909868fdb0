"""Ship a run's final reader inside the package, with its figures in the bundled readers' catalog.

Usage, RUN being one of:
    python benchmarks/bundle_reader.py RUN --as NAME --site "what the site is"
  NAME of python benchmarks/run_target.py TARGET evaluate --name NAME: its reader in .cache/targets/NAME/main, its
      figures in metrics/targets/NAME/ (evaluate.json, run.json);
  panel:SITE after python benchmarks/panel.py --site SITE: its reader in .cache/panel/SITE/main/sites/SITE/, its
      figures in metrics/panel/SITE/evaluate.json and its row of metrics/panel.json;
  default after dvc repro: data/models/ and metrics/evaluate.json, this machine, today and HEAD.
It copies the reader to src/simcaptcha/readers/NAME.safetensors and writes its entry in
src/simcaptcha/readers/catalog.json:
the measured and estimated figures, the real labels used, the machine, and the commands that rebuild it. The
same commands on the same machine type give a file with the same sha256.
"""

import argparse
import datetime
import hashlib
import json
import re
import shutil
from pathlib import Path

from run_target import commit_of

from simcaptcha.bundled import CATALOG, CATALOG_KEYS, READERS, catalog
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.machine import available_cores, cpu_model
from simcaptcha.modelfile import load_reader
from simcaptcha.store import write_json

ROOT = Path.cwd()
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")  # a bare name: never mistaken for a path by --model
DEFAULT_RUN = "default"  # the workspace's own dvc repro, not a target run
PANEL = "panel:"  # panel:SITE, a site of benchmarks/panel.py


def workspace_record() -> dict:
    """What run.json says of a target run, for the workspace's own default run (its last dvc repro)."""
    return {"cpu": cpu_model(), "cores": available_cores(), "date": datetime.date.today().isoformat(),
            "commit": commit_of(ROOT)}


def catalog_entry(run: str, name: str, site: str, reader: Path) -> dict:
    """The catalog's entry for the reader of target run ``run`` (``default``: the workspace's dvc repro), from the
    figures that run wrote."""
    bundle = f"python benchmarks/bundle_reader.py {run} --as {name} --site {json.dumps(site)}"
    if run == DEFAULT_RUN:
        evaluate = json.loads((ROOT / "metrics" / "evaluate.json").read_text())["selftrained"]
        record, rebuild = workspace_record(), f"dvc repro && {bundle}"
    elif run.startswith(PANEL):
        panel_site = run.removeprefix(PANEL)
        evaluate = json.loads((ROOT / "metrics" / "panel" / panel_site / "evaluate.json").read_text())["selftrained"]
        row = json.loads((ROOT / "metrics" / "panel.json").read_text())[panel_site]
        cpu, _, cores = row["cpu"].rpartition(", ")  # "AMD EPYC, 2 cores"
        record = {"cpu": cpu, "cores": int(cores.split()[0]), "date": row["date"], "commit": row["commit"]}
        rebuild = f"python benchmarks/panel.py --site {panel_site} && {bundle}"
    else:
        figures = ROOT / "metrics" / "targets" / run
        evaluate = json.loads((figures / "evaluate.json").read_text())["selftrained"]
        record = json.loads((figures / "run.json").read_text())
        stages = " ".join(record["stages"]) if isinstance(record["stages"], list) else ""
        rebuild = f"python benchmarks/run_target.py {record['target']} {stages} --name {run} && {bundle}"
    entry = {"file": f"{name}.safetensors", "site": site, "rebuild": " ".join(rebuild.split()),
             "sha256": hashlib.sha256(reader.read_bytes()).hexdigest(),
             **{key: record[key] for key in ("cpu", "cores", "date", "commit")},
             **{key: evaluate.get(key) for key in ("char_accuracy", "captcha_accuracy", "count", "real_labels_used",
                                                   "estimated_char_accuracy", "estimated_captcha_accuracy")}}
    return {key: entry[key] for key in CATALOG_KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the --name of a run_target.py run, panel:SITE or default")
    parser.add_argument("--as", dest="name", required=True, help="the bundled reader's name, e.g. kaggle-v2")
    parser.add_argument("--site", required=True, help="one line on the site the reader reads")
    args = parser.parse_args()
    if not NAME.fullmatch(args.name):
        raise SimcaptchaError(f"--as {args.name!r}: lower-case letters, digits and '-', at most 40")
    if args.run.startswith(PANEL):
        site = args.run.removeprefix(PANEL)
        reader = ROOT / ".cache" / "panel" / site / "main" / "sites" / site / "reader.safetensors"
    else:
        project = ROOT if args.run == DEFAULT_RUN else ROOT / ".cache" / "targets" / args.run / "main"
        reader = project / "data" / "models" / "selftrained.safetensors"
    load_reader(reader)  # a whole, consistent reader file, or one line saying what is wrong
    entry = catalog_entry(args.run, args.name, args.site, reader)
    if entry["real_labels_used"] != 0:
        raise SimcaptchaError(f"run {args.run} trained on {entry['real_labels_used']} real labels; bundled readers "
                              f"use none")
    READERS.mkdir(exist_ok=True)
    shutil.copy(reader, READERS / entry["file"])
    write_json(CATALOG, {**catalog(), args.name: entry})
    print(f"{args.name}: {READERS / entry['file']} ({reader.stat().st_size} bytes), catalog {CATALOG}")


if __name__ == "__main__":
    run_main(main)
