"""The font pool: the vendored families, the machine's own fonts, and font files named by path.

``render.fonts`` in ``params.yaml`` is a list of names, each one of:

* a vendored family: a folder name under ``simcaptcha/fontdata/`` such as ``"Roboto"`` or ``"open-sans"``
  (case-insensitive; spaces and underscores count as hyphens);
* ``"*"``: every vendored family;
* ``"system"``: every .ttf/.otf under /usr/share/fonts, /usr/local/share/fonts and ~/.fonts that Pillow opens;
* a path to a .ttf/.otf file (anything containing a ``/`` or ending in .ttf/.otf), relative to the working
  directory or absolute.

``resolve_fonts`` turns that list into one de-duplicated list of font files in a fixed order, so that a
renderer that picks fonts by index draws the same fonts for the same seed on every machine: vendored files
first (by family, then file name, wherever the package is installed), then every other file by its path.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from .errors import SimcaptchaError

FONTDATA_DIR = Path(__file__).resolve().with_name("fontdata")
FONT_SUFFIXES = (".ttf", ".otf")
# Read at call time, so tests (and unusual machines) can point them elsewhere.
SYSTEM_FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("~/.fonts"))

ALL_VENDORED = "*"
SYSTEM = "system"
_PROBE_SIZE = 24  # em size in pixels at which a font file is test-opened


def _is_font_file(path: Path) -> bool:
    return path.suffix.lower() in FONT_SUFFIXES and path.is_file()


def _key(name: str) -> str:
    """The form in which family names are compared: ``Open Sans``, ``open_sans`` and ``OPEN-SANS`` are one."""
    return name.strip().lower().replace(" ", "-").replace("_", "-")


def vendored_families() -> dict[str, list[Path]]:
    """Each vendored family (its folder name under fontdata/) and its font files, both sorted."""
    if not FONTDATA_DIR.is_dir():
        return {}
    families: dict[str, list[Path]] = {}
    for folder in sorted(FONTDATA_DIR.iterdir(), key=lambda p: (p.name.lower(), p.name)):
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if _is_font_file(p))
        if files:
            families[folder.name] = files
    return families


def system_fonts() -> list[Path]:
    """Every .ttf/.otf file under the system font folders (searched recursively), sorted; may be empty."""
    found: set[Path] = set()
    for folder in SYSTEM_FONT_DIRS:
        folder = folder.expanduser()
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if _is_font_file(path):
                found.add(path.resolve())
    return sorted(found)


def _opens(path: Path) -> bool:
    from PIL import ImageFont

    try:
        ImageFont.truetype(str(path), _PROBE_SIZE)
    except (OSError, ValueError):
        return False
    return True


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.lower().endswith(FONT_SUFFIXES)


def _font_path(name: str) -> Path:
    """The font file a path-like name points at, checked to exist and to open with Pillow."""
    path = Path(name).expanduser()
    if not path.exists():
        raise SimcaptchaError(f"font file {name} does not exist")
    if path.is_dir():
        raise SimcaptchaError(f"font path {name} is a folder; name a .ttf or .otf file")
    if path.suffix.lower() not in FONT_SUFFIXES:
        raise SimcaptchaError(f"font file {name} is not a .ttf or .otf file")
    if not _opens(path):
        raise SimcaptchaError(f"font file {name} cannot be read as a font (corrupt, or not a TrueType/OpenType file)")
    return path.resolve()


def _unknown_family(name: str, families: dict[str, list[Path]]) -> SimcaptchaError:
    by_key = {_key(family): family for family in families}
    nearest = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.6)
    hint = (
        f"did you mean {by_key[nearest[0]]!r}?"
        if nearest
        else f"the vendored families are: {', '.join(families)}"
    )
    return SimcaptchaError(
        f"unknown font family {name!r}: {hint} "
        f"(a font name is a vendored family, {ALL_VENDORED!r}, {SYSTEM!r}, or a path to a .ttf/.otf file)"
    )


def _sort_key(path: Path) -> tuple:
    """Vendored files first, by family then file name (independent of the install location); then by path."""
    try:
        family, file_name = path.relative_to(FONTDATA_DIR).parts
    except ValueError:
        return (1, str(path))
    return (0, family.lower(), family, file_name)


def check_font_names(names: list[str]) -> None:
    """Refuse an unknown family or a missing font file when params load, before any stage runs (``resolve_fonts``
    opens the files later, when fonts are drawn)."""
    families = vendored_families()
    by_key = {_key(family) for family in families}
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise SimcaptchaError(f"params: render.fonts: font name {name!r} is not a non-empty string")
        name = name.strip()
        if name in (ALL_VENDORED, SYSTEM) or name.lower() == SYSTEM:
            continue
        if _looks_like_path(name):
            if not Path(name).expanduser().is_file():
                raise SimcaptchaError(f"params: render.fonts: font file {name} does not exist")
        elif _key(name) not in by_key:
            raise SimcaptchaError(f"params: render.fonts: {_unknown_family(name, families)}")


def resolve_fonts(names: list[str]) -> list[Path]:
    """The font files that ``names`` select, de-duplicated, in a fixed order (see the module docstring)."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise SimcaptchaError(f"fonts must be a list of font names, not {names!r}")
    families = vendored_families()
    by_key = {_key(family): files for family, files in families.items()}
    chosen: set[Path] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise SimcaptchaError(f"font name {name!r} is not a non-empty string")
        name = name.strip()
        if name == ALL_VENDORED:
            if not families:
                raise SimcaptchaError(f"no vendored fonts found under {FONTDATA_DIR}")
            for files in families.values():
                chosen.update(files)
        elif name.lower() == SYSTEM:
            readable = [path for path in system_fonts() if _opens(path)]
            if not readable:
                folders = ", ".join(str(folder) for folder in SYSTEM_FONT_DIRS)
                raise SimcaptchaError(f"font name {SYSTEM!r}: no readable .ttf/.otf fonts under {folders}")
            chosen.update(readable)
        elif _looks_like_path(name):
            chosen.add(_font_path(name))
        elif _key(name) in by_key:
            chosen.update(by_key[_key(name)])
        else:
            raise _unknown_family(name, families)
    if not chosen:
        raise SimcaptchaError("no fonts selected: render.fonts is empty (use ['*'] for every vendored family)")
    return sorted(chosen, key=_sort_key)


def font_id(path: str | Path) -> str:
    """A name for a font file that is the same on every machine: ``Family/file.ttf`` when vendored, else its path."""
    path = Path(path)
    try:
        return path.relative_to(FONTDATA_DIR).as_posix()
    except ValueError:
        return str(path)


def font_from_id(name: str) -> Path:
    """The font file ``font_id`` named, checked to exist."""
    path = FONTDATA_DIR / name if not Path(name).is_absolute() else Path(name)
    if not path.is_file():
        raise SimcaptchaError(f"font {name}: no such font file (was it removed since the estimate stage ran?)")
    return path
