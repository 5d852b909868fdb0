"""The vendored font pool (licences, size, glyph coverage) and resolve_fonts."""

from __future__ import annotations

import re
import shutil
import string
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from simcaptcha import fonts
from simcaptcha.errors import SimcaptchaError
from simcaptcha.fonts import FONTDATA_DIR, resolve_fonts, system_fonts, vendored_families

FAMILIES = vendored_families()
ALL_FILES = [path for files in FAMILIES.values() for path in files]
TARGET_CHARS = string.ascii_lowercase + string.digits  # the captchas' alphabet
ALL_CHARS = string.ascii_letters + string.digits
X_HEIGHT_LETTERS = "acemnorsuvwxz"  # no ascender or descender
MISSING_CHARS = ("\uffff", "\U000f0000")  # a non-character and a private-use code point: no font maps them
MAX_BYTES = 20 * 1024 * 1024


def _render(font: ImageFont.FreeTypeFont, char: str) -> bytes:
    image = Image.new("L", (72, 72))
    ImageDraw.Draw(image).text((12, 8), char, font=font, fill=255)
    return image.tobytes()


def _any_vendored_file() -> Path:
    return FAMILIES["Roboto"][0]


# ------------------------------------------------------------------ the vendored files
def test_at_least_20_families():
    assert len(FAMILIES) >= 20, sorted(FAMILIES)


def test_family_folders_hold_only_fonts_and_licences():
    for folder in FONTDATA_DIR.iterdir():
        if folder.is_file():
            assert folder.name == "README.md"
            continue
        assert folder.name in FAMILIES, f"{folder} holds no .ttf/.otf file"
        for path in folder.iterdir():
            assert path.suffix.lower() in (".ttf", ".otf") or path.name in ("LICENSE.txt", "debian-copyright.txt"), path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_has_an_ofl_or_apache_licence_beside_it(family):
    licence = FONTDATA_DIR / family / "LICENSE.txt"
    assert licence.is_file(), f"{family} has no LICENSE.txt"
    text = licence.read_text(encoding="utf-8")
    ofl = "SIL OPEN FONT LICENSE Version 1.1" in text
    apache = re.search(r"Apache License\s+Version 2\.0, January 2004", text) is not None
    assert ofl or apache, f"{licence} holds neither the OFL 1.1 nor the Apache 2.0 text"


def test_readme_lists_every_family():
    readme = (FONTDATA_DIR / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip() for line in readme.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows - {"family"} == set(FAMILIES)


def test_total_size_is_within_budget():
    total = sum(path.stat().st_size for path in FONTDATA_DIR.rglob("*") if path.is_file())
    assert total <= MAX_BYTES, f"fontdata/ is {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_font_renders_every_character_distinctly(path):
    font = ImageFont.truetype(str(path), 40)
    missing = {_render(font, char) for char in MISSING_CHARS}
    bitmaps = {}
    for char in ALL_CHARS:
        bitmap = _render(font, char)
        assert any(bitmap), f"{path.name}: {char!r} renders empty"
        assert bitmap not in missing, f"{path.name}: {char!r} renders as the missing-glyph box"
        bitmaps[char] = bitmap
    by_bitmap: dict[bytes, list[str]] = {}
    for char in TARGET_CHARS:
        by_bitmap.setdefault(bitmaps[char], []).append(char)
    assert not [chars for chars in by_bitmap.values() if len(chars) > 1]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_font_has_real_lowercase(path):
    """A capitals-only font (Humor Sans is one) would teach lowercase labels with capital shapes.

    Its x-height letters stand as tall as the capitals; in the vendored fonts they reach at most 0.81 of
    the capitals' height, in Humor Sans 1.03.
    """
    font = ImageFont.truetype(str(path), 100)

    def height(char: str) -> int:
        _, top, _, bottom = font.getbbox(char)
        return bottom - top

    ratio = sum(height(char) / height(char.upper()) for char in X_HEIGHT_LETTERS) / len(X_HEIGHT_LETTERS)
    assert ratio < 0.9, f"{path.name}: lowercase letters are {ratio:.2f} of the capitals' height"


# ------------------------------------------------------------------ resolve_fonts
def test_star_is_every_vendored_file_in_family_order():
    resolved = resolve_fonts(["*"])
    assert resolved == ALL_FILES
    assert len(set(resolved)) == len(resolved)
    assert all(path.is_absolute() for path in resolved)


@pytest.mark.parametrize("name", ["roboto", "ROBOTO", " Roboto "])
def test_family_names_ignore_case(name):
    assert resolve_fonts([name]) == FAMILIES["Roboto"]


def test_spaces_and_underscores_count_as_hyphens():
    assert resolve_fonts(["open sans"]) == resolve_fonts(["Open_Sans"]) == FAMILIES["Open-Sans"]


def test_result_is_deduplicated_and_independent_of_name_order():
    a = resolve_fonts(["Roboto", "Lato", "roboto", str(FAMILIES["Lato"][0])])
    b = resolve_fonts(["Lato", "Roboto"])
    assert a == b == sorted(FAMILIES["Lato"] + FAMILIES["Roboto"], key=lambda p: p.parent.name)


def test_typo_suggests_the_nearest_family():
    with pytest.raises(SimcaptchaError, match=r"'Robto'.*did you mean 'Roboto'"):
        resolve_fonts(["Roboto", "Robto"])
    with pytest.raises(SimcaptchaError, match="did you mean 'Liberation-Sans'"):
        resolve_fonts(["liberation sanz"])


def test_unrelated_name_lists_the_families():
    with pytest.raises(SimcaptchaError, match="unknown font family 'qqqqqq'.*Roboto"):
        resolve_fonts(["qqqqqq"])


def test_font_path_is_accepted_after_the_vendored_files(tmp_path, monkeypatch):
    own = tmp_path / "mine" / "My-Font.ttf"
    own.parent.mkdir()
    shutil.copyfile(_any_vendored_file(), own)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_fonts(["mine/My-Font.ttf", "Lato"])
    assert resolved == [*FAMILIES["Lato"], own.resolve()]


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "Absent.ttf"
    with pytest.raises(SimcaptchaError, match=f"{re.escape(str(missing))}.*does not exist"):
        resolve_fonts([str(missing)])


def test_corrupt_font_file_is_named(tmp_path):
    corrupt = tmp_path / "garbage.ttf"
    corrupt.write_bytes(b"this is not a font\x00\x01\x02" * 64)
    with pytest.raises(SimcaptchaError, match=f"{re.escape(str(corrupt))}.*cannot be read as a font"):
        resolve_fonts(["*", str(corrupt)])


def test_folder_and_wrong_suffix_are_refused(tmp_path):
    with pytest.raises(SimcaptchaError, match="is a folder"):
        resolve_fonts([str(tmp_path) + "/"])
    other = tmp_path / "font.woff"
    shutil.copyfile(_any_vendored_file(), other)
    with pytest.raises(SimcaptchaError, match="not a .ttf or .otf"):
        resolve_fonts([str(other)])


@pytest.mark.parametrize("names", [[], "Roboto", None, [""], [3]])
def test_empty_or_malformed_names_are_refused(names):
    with pytest.raises(SimcaptchaError):
        resolve_fonts(names)


def test_system_fonts_on_this_machine_are_listed_sorted():
    found = system_fonts()
    assert found == sorted(set(found))
    assert all(path.suffix.lower() in (".ttf", ".otf") and path.is_file() for path in found)
    if [path for path in found if fonts._opens(path)]:
        assert set(resolve_fonts(["system"])) <= set(found)
    else:
        with pytest.raises(SimcaptchaError, match="no readable"):
            resolve_fonts(["system"])


def test_system_keeps_readable_fonts_only(tmp_path, monkeypatch):
    (tmp_path / "truetype" / "x").mkdir(parents=True)
    good = tmp_path / "truetype" / "x" / "Good.TTF"
    shutil.copyfile(_any_vendored_file(), good)
    bad = tmp_path / "Bad.otf"
    bad.write_bytes(b"\x00" * 100)
    (tmp_path / "notes.txt").write_text("not a font")
    monkeypatch.setattr(fonts, "SYSTEM_FONT_DIRS", (tmp_path, tmp_path / "absent"))
    assert system_fonts() == sorted([bad.resolve(), good.resolve()])
    assert resolve_fonts(["system"]) == [good.resolve()]
    assert resolve_fonts(["Lato", "SYSTEM"]) == [*FAMILIES["Lato"], good.resolve()]


def test_system_without_fonts_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fonts, "SYSTEM_FONT_DIRS", (tmp_path,))
    assert system_fonts() == []
    with pytest.raises(SimcaptchaError, match="'system': no readable"):
        resolve_fonts(["system"])
