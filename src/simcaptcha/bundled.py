"""Readers that ship inside the package: ``predict --model hackmit2017`` reads a known site's captchas right after
``pip install``, offline. Each was trained with zero real labels by a target run; the catalog beside them says
how well it read that site's labelled captchas, on what machine, and the command that rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SimcaptchaError

READERS = Path(__file__).parent / "readers"
CATALOG = READERS / "catalog.json"
CATALOG_KEYS = ("file", "site", "char_accuracy", "captcha_accuracy", "count", "real_labels_used",
                "estimated_char_accuracy", "estimated_captcha_accuracy", "rebuild", "cpu", "cores", "date", "commit",
                "sha256")


def catalog() -> dict[str, dict]:
    """Every bundled reader by name, as catalog.json lists it (empty where the package ships none)."""
    try:
        entries = json.loads(CATALOG.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise SimcaptchaError(f"{CATALOG}: the bundled readers' catalog cannot be read ({error})") from None
    return dict(sorted(entries.items()))


def model_path(model: str | Path) -> Path:
    """The file ``--model`` names: a bundled reader's by its name (a bare name, no such file here), else the
    path as given."""
    path = Path(model)
    entry = catalog().get(str(model)) if not path.exists() and path.name == str(model) else None
    return READERS / entry["file"] if entry else path


def models_listing() -> str:
    """``simcaptcha models``: one block per bundled reader, its figures as measured when it was built."""
    entries = catalog()
    if not entries:
        return "no bundled readers in this installation\n"

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    lines = []
    for name, entry in entries.items():
        lines += [f"{name}: {entry['site']}",
                  f"  read {percent(entry['char_accuracy'])} of characters, {percent(entry['captcha_accuracy'])} of "
                  f"whole captchas on {entry['count']} labelled ones; real labels used in training: "
                  f"{entry['real_labels_used']}",
                  f"  estimated without labels: {percent(entry['estimated_char_accuracy'])} / "
                  f"{percent(entry['estimated_captcha_accuracy'])}",
                  f"  built {entry['date']} at {entry['commit'][:12]} on {entry['cpu']}, {entry['cores']} cores",
                  f"  rebuild: {entry['rebuild']}",
                  f"  use: simcaptcha predict --model {name} FILES"]
    return "\n".join(lines) + "\n"
