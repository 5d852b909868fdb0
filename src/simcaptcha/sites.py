"""``simcaptcha site``: a new site in one command. What the pool and the labels' format say is measured and
written to targets/NAME.yaml, each value beside what was measured; the pipeline runs on it as a DVC experiment,
and the final reader and its figures are left under sites/NAME/.

Measured here, before the pipeline, on a binarized sample of the pool: the working size (the pool's native size,
scaled down to at most ``MAX_WORKING`` for time and memory), random thin lines that join the characters (then
drawn across the synthetic text and removed before the estimate stage measures it), salt noise (specks), the
captcha length (from the labels when there are some), the reader's head (CTC where the length varies or the
characters touch or share columns) and how far the characters leave one baseline (render.y_offset, matched by
drawing probes); a charset that no vendored font draws is refused, naming the characters.
With --case-insensitive the letters are drawn in either case and every label is read in the charset's case.
The pipeline's own stages measure the rest from the pool (polarity, background, mask, text height, stroke, fonts,
placement) and evaluate estimates the accuracy without a label.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

from .config import (BinarizeConfig, Config, EstimateConfig, FetchConfig, MaskConfig, RenderConfig, SourceConfig,
                     parse_section)
from .errors import SimcaptchaError
from .estimate import fit_font, text_components, text_ink, thin_strokes
from .fetch import fetch_set, source_images
from .fonts import resolve_fonts
from .imaging import binarize_images, decode_image, detect_polarity, estimate_background, fit_to_size
from .machine import available_cores, cpu_model
from .mask import estimate_mask
from .pipeline import FETCH_CACHE, METRICS, MODELS
from .reading import resolve_precision
from .rendering import FontStyle, Renderer, fonts_with_glyphs
from .store import read_json

MAX_WORKING = (64, 256)  # height, width: larger captchas are read scaled down, aspect kept
SIZE_SAMPLE = 200  # pool images whose native size and look are measured
LINE_OPENING = 1  # estimate.opening where random lines join the text: it removes strokes under 3 px wide
BENT = 1.5  # pixels: thin ink that strays further (median) from a straight fit through it is a bent line
SPECK = 4  # pixels: ink components this small are a site's salt noise, not text (a glyph's dot is larger)
MIN_SALT = 0.001  # share of pixels in specks below which a site draws none worth rendering
PROBE_FONTS = 4  # vendored fonts, spread over their list, fitted to the pool to draw the baseline probes
BASELINE_PROBES = 100  # captchas rendered per candidate baseline jitter
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass
class SiteRequest:
    """What the user said: the sources, and optionally labels, charset and length."""

    name: str
    pool: list[str]
    labelled: list[str] = field(default_factory=list)
    labels: str = ""  # "filename" or "csv:PATH"
    label_regex: str | None = None
    charset: str = RenderConfig.charset
    length: tuple[int, int] | None = None
    case_insensitive: bool = False  # letters drawn in either case, labelled in the charset's


def parse_length(text: str) -> tuple[int, int]:
    """``N`` or ``MIN-MAX`` characters per captcha."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not match:
        raise SimcaptchaError(f"--length {text!r}: expected N or MIN-MAX, e.g. 5 or 3-6")
    low, high = int(match[1]), int(match[2] or match[1])
    if not 1 <= low <= high:
        raise SimcaptchaError(f"--length {text!r}: expected 1 <= MIN <= MAX")
    return low, high


def labelled_source(request: SiteRequest) -> dict:
    """fetch.labelled for the request's labelled sources and label format."""
    if not request.labelled:
        if request.labels:
            raise SimcaptchaError("--labels needs --labelled sources")
        return {}
    kind, _, path = request.labels.partition(":")
    if kind == "filename" and not path:
        source = {"sources": request.labelled, "labels": "filename", "labels_csv": ""}
    elif kind in ("csv", "json") and path:
        source = {"sources": request.labelled, "labels": kind, f"labels_{kind}": path}
    else:
        raise SimcaptchaError(f"--labels {request.labels!r}: expected filename, csv:PATH or json:PATH")
    if request.label_regex is not None:
        source["label_regex"] = request.label_regex
    return source


def working_size(heights: list[int], widths: list[int]) -> tuple[list[int], str]:
    """binarize.size from the pool's native sizes: their median, scaled down to fit ``MAX_WORKING``."""
    height, width = int(statistics.median(heights)), int(statistics.median(widths))
    scale = min(1.0, MAX_WORKING[0] / height, MAX_WORKING[1] / width)
    size = [max(8, round(height * scale)), max(8, round(width * scale))]
    return size, f"the pool's median native size is {height}x{width}" + (
        f", read at {scale:.2f} of it" if scale < 1 else ", read as it is")


def pool_sample(sources: list[str]) -> list[np.ndarray]:
    """Up to ``SIZE_SAMPLE`` pool images, decoded (RGB), read from the first sources."""
    images = []
    for spec in sources:
        for image in source_images(spec, FetchConfig(), FETCH_CACHE):
            images.append(decode_image(image.data, image.where))
            if len(images) >= SIZE_SAMPLE:
                return images
    if not images:
        raise SimcaptchaError(f"--pool {' '.join(sources)}: no images")
    return images


def binarized_sample(images: list[np.ndarray], size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The sample as the binarize and mask stages will see it with their defaults, and its fixed-noise mask."""
    config = BinarizeConfig(size=size)
    colour = np.stack([fit_to_size(image, *size) for image in images])
    binary = binarize_images(colour, estimate_background(colour, config.background), config,
                             detect_polarity(colour, config))
    return binary, estimate_mask(binary, MaskConfig())


def random_lines(binary: np.ndarray, mask: np.ndarray) -> tuple[dict, str, int]:
    """Params for random thin lines across the text, what was measured, and text components per captcha.

    Thin strokes that join a site's characters (Kaggle's one bent line, the captcha package's noise curve) show
    as fewer components than an opening by a 3×3 square leaves: then every synthetic captcha gets one line as
    wide as the strokes the opening removed (their 10th to 90th percentile), bending where that thin ink strays
    from a straight fit through it, and the estimate stage removes them before it measures the text. Returns no params
    where the opening splits nothing (thin strokes there are the text's own, or fixed noise the mask holds).
    """
    min_area = EstimateConfig().min_area
    plain = float(np.median(text_components(binary, mask, min_area).per_image))
    opened = float(np.median(text_components(binary, mask, min_area, LINE_OPENING).per_image))
    if opened <= plain:
        return {}, f"a 3x3 opening splits no text ({plain:g} components per captcha either way): no random lines", \
            round(plain)
    widths, strays = [], []
    for image in binary:
        thin = thin_strokes(image > 127, LINE_OPENING)[1]
        skeleton = skeletonize(thin)
        if skeleton.sum() < 10:
            continue
        # across a stroke w px wide the middle pixel lies (w + 1) / 2 from the background
        widths.append(float((2 * ndimage.distance_transform_edt(thin)[skeleton] - 1).mean()))
        rows, columns = np.nonzero(thin)
        if np.ptp(columns) >= 10:  # how far the thin ink strays from one straight line through it
            fit = np.polyval(np.polyfit(columns, rows, 1), columns)
            strays.append(float(np.median(np.abs(rows - fit))))
    if not widths:  # the opening split specks off the text, not strokes: nothing to draw
        return {}, f"a 3x3 opening splits the text ({plain:g} into {opened:g} components per captcha) but removes " \
            "no stroke: no random lines", round(opened)
    low, high = (int(np.clip(round(value), 1, 2 * LINE_OPENING + 1)) for value in np.percentile(widths, [10, 90]))
    bent = bool(strays) and float(np.median(strays)) > BENT
    params = {"estimate": {"opening": LINE_OPENING},
              "render": {"lines": [1, 1], "line_width": [low, high], "line_bends": [1, 2] if bent else [0, 0]}}
    return params, (f"thin strokes join the text: a 3x3 opening splits {plain:g} components per captcha into "
                    f"{opened:g}; strokes {low}-{high} px wide, {'bent' if bent else 'straight'}"), round(opened)


def labels_of(source: dict, render: RenderConfig) -> list[str]:
    """The labels the labelled sources give, as a reader of the charset gives them (their format, never how a
    reader scores on them)."""
    config = parse_section(SourceConfig, source, "fetch.labelled")
    _, manifest = fetch_set(config, FetchConfig(), "labelled", FETCH_CACHE)
    return [render.label_of(label) for label in manifest["label"]]


def site_length(given: tuple[int, int] | None, labels: list[str]) -> tuple[tuple[int, int], str]:
    """render.length and what decided it: the labels' lengths measure the site, so where they fall outside the
    length the user gave, the labels' range is used (a reader of too few positions cannot read the longer ones)."""
    if not labels:
        if not given:
            raise SimcaptchaError("--length is needed where no labelled captchas are given (e.g. --length 5 or 3-6)")
        return given, "as given"
    lengths = [len(label) for label in labels]
    held = (min(lengths), max(lengths))
    measured = f"the {len(lengths)} labels hold {held[0]} to {held[1]} characters"
    if not given:
        return held, measured
    if given[0] <= held[0] and held[1] <= given[1]:
        return given, f"as given; {measured}"
    return held, f"{measured}, outside the --length {given[0]}-{given[1]} given: the labels' range"


def site_target(request: SiteRequest) -> tuple[dict, dict[str, str]]:
    """The target's params and a comment per measured key: what was measured."""
    if not NAME.fullmatch(request.name):
        raise SimcaptchaError(f"site name {request.name!r}: letters, digits, '-' and '_', at most 64")
    try:
        render = parse_section(RenderConfig, {"charset": request.charset,
                                              "case_insensitive": request.case_insensitive}, "render")
        fonts, _ = fonts_with_glyphs(resolve_fonts(render.fonts), render.drawn_charset())
    except SimcaptchaError as error:
        message = str(error).replace("params: render.case_insensitive: ", "--case-insensitive: ")
        raise SimcaptchaError(message.replace("params: render.charset", "--charset")
                              .replace("render.charset", "--charset")) from None
    notes: dict[str, str] = {"render.charset": f"{len(fonts)} of the vendored fonts draw every character"
                             + (" in either case" if render.case_insensitive else "")}
    labelled = labelled_source(request)
    sample = pool_sample(request.pool)
    size, notes["binarize.size"] = working_size([image.shape[0] for image in sample],
                                                [image.shape[1] for image in sample])
    binary, mask = binarized_sample(sample, size)
    lines, notes["render.lines"], components = random_lines(binary, mask)
    salt, notes["render.salt"] = salt_noise(binary, mask)
    opening = lines.get("estimate", {}).get("opening", 0)
    if lines:
        notes["estimate.opening"] = "the text is measured with those lines removed"
    ink = text_ink(binary, mask, EstimateConfig().min_area, opening)
    runs = column_runs(ink)
    labels = labels_of(labelled, render) if labelled else []  # fetched once: the length and the charset check
    length, notes["render.length"] = site_length(request.length, labels)
    if labelled:  # a label the reader cannot give would only fail the pipeline's first training stage
        outside = sorted(set("".join(labels)) - set(request.charset))
        if outside:
            hint = "" if render.case_insensitive or not any(char.swapcase() in request.charset for char in outside) \
                else " (a site whose labels mix cases: --case-insensitive)"
            raise SimcaptchaError(f"the labels hold {''.join(outside)!r}, outside --charset {request.charset!r}{hint}")
    head = "ctc" if length[0] != length[1] or min(components, runs) < length[0] else "positions"
    notes["classifier.head"] = "the length varies: CTC reads any length" if length[0] != length[1] else \
        f"the characters touch or share columns ({components} text components, {runs:g} runs of inked columns " \
        "per captcha): CTC reads them uncut" if head == "ctc" else \
        f"every captcha has the same length and its characters stand apart ({components} text components, " \
        f"{runs:g} runs of inked columns per captcha): one head per position"
    render = dataclasses.replace(render, length=list(length), **lines.get("render", {}))
    baseline, notes["render.y_offset"] = baseline_jitter(binary, mask, ink, opening, render, fonts)
    target = {"fetch": {"unlabelled": {"sources": request.pool}, "labelled": labelled},
              "binarize": {"size": size},
              "estimate": lines.get("estimate", {}),
              "render": {"charset": request.charset, "length": list(length),
                         **({"case_insensitive": True} if render.case_insensitive else {}), **lines.get("render", {}),
                         **salt, **baseline},
              "classifier": {"head": head},
              "selftrain": {"exclude_labelled": not set(request.pool) & set(request.labelled)}}
    if render.case_insensitive:
        notes["render.case_insensitive"] = "as given: letters drawn in either case, read in the charset's"
    notes["selftrain.exclude_labelled"] = "the labelled captchas come from other sources than the pool" \
        if target["selftrain"]["exclude_labelled"] else "the pool holds the labelled captchas: read them unlabelled"
    if not labelled:
        del target["fetch"]["labelled"]
    if not target["estimate"]:
        del target["estimate"]
    parse_section(Config, target, "")  # every value valid before anything is written
    return target, notes


def salt_noise(binary: np.ndarray, mask: np.ndarray) -> tuple[dict, str]:
    """render.salt from the share of pixels (outside the fixed-noise mask) in specks of at most ``SPECK`` pixels:
    the renderer flips that share of pixels at random, so the synthetic captchas carry the site's dots."""
    shares = []
    for image in binary:
        components, _ = ndimage.label((image > 127) & ~mask, structure=np.ones((3, 3)))
        sizes = np.bincount(components.ravel())
        sizes[0] = SPECK + 1  # the background is no speck
        shares.append(float((sizes[components] <= SPECK).mean()))
    share = round(float(np.mean(shares)), 4)
    if share < MIN_SALT:
        return {}, f"{share:.2%} of pixels are specks of at most {SPECK} px: no salt noise"
    return {"salt": share}, f"{share:.2%} of pixels are specks of at most {SPECK} px"


def column_runs(ink: np.ndarray) -> float:
    """Runs of inked columns per captcha (median): characters that share columns, packed or overlapping, leave
    fewer runs than there are characters, so no cut between columns separates them."""
    inked = ink.any(axis=1).astype(np.int8)
    return float(np.median((np.diff(inked, axis=1, prepend=0) == 1).sum(axis=1)))


def baseline_spread(ink: np.ndarray, segments: int) -> float:
    """How far characters leave a common baseline: the standard deviation, in pixels, of the mean ink row in
    ``segments`` equal slices of each captcha's text columns about that captcha's median. Slices, not
    components, so touching characters and broken glyphs count alike."""
    residuals = []
    rows = np.arange(ink.shape[1], dtype=np.float64)
    for image in ink:
        columns = np.flatnonzero(image.any(axis=0))
        if len(columns) < segments:
            continue
        edges = np.linspace(columns[0], columns[-1] + 1, segments + 1).round().astype(int)
        weights = [image[:, low:high].sum(axis=1) for low, high in zip(edges[:-1], edges[1:])]
        centres = np.asarray([rows @ weight / weight.sum() for weight in weights if weight.sum()])
        if len(centres) >= 2:
            residuals.extend(centres - np.median(centres))
    return float(np.std(residuals)) if residuals else 0.0


def baseline_jitter(binary: np.ndarray, mask: np.ndarray, ink: np.ndarray, opening: int, render: RenderConfig,
                    fonts: list[Path]) -> tuple[dict, str]:
    """render.y_offset: the jitter whose synthetic captchas leave the baseline as far as the pool's do.

    A few vendored fonts are fitted to the pool's text height and stroke (as the estimate stage fits them),
    and ``BASELINE_PROBES`` captchas are drawn with each candidate jitter, 0 to a fifth of the height, through
    the same measurement (``baseline_spread``), with the same random draws: the glyphs' own heights (descenders,
    capitals) spread the rows in both, so only the jitter is left to match. Rotation is not measured this way:
    the fonts' own slant outweighs it (docs/experiments.md), so render.rotation keeps its default.
    """
    segments = max(2, round(np.mean(render.length)))
    pool_spread = baseline_spread(ink, segments)
    height, width = binary.shape[1:]
    config = EstimateConfig(opening=opening)
    measured = text_components(binary, mask, config.min_area, opening)
    styles = []
    for font in fonts[::max(1, len(fonts) // PROBE_FONTS)][:PROBE_FONTS]:
        try:
            fit = fit_font(str(font), measured, render, config, height, width, mask)
        except SimcaptchaError:  # the font leaves no text component at any size: not a probe
            continue
        styles.append(FontStyle(fit.font, (fit.size, fit.size), (fit.stroke, fit.stroke), fit.y_shift))
    if not styles:
        return {}, "no vendored font could be fitted to the pool's text: left at its default"
    spreads = []
    for jitter in range(height // 5 + 1):
        probe = dataclasses.replace(render, y_offset=[-jitter, jitter], salt=0.0, use_mask=True)
        renderer = Renderer(probe, height, width, tuple(styles), mask, spans=measured.spans)
        rng = np.random.default_rng(0)
        drawn = np.stack([renderer.captcha(rng)[0] for _ in range(BASELINE_PROBES)])
        spreads.append(baseline_spread(text_ink(drawn, mask, config.min_area, opening), segments))
    jitter = int(np.argmin(np.abs(np.asarray(spreads) - pool_spread)))
    return {"y_offset": [-jitter, jitter]}, (
        f"the text's rows in {segments} slices of its columns spread {pool_spread:.1f} px (sd) about each "
        f"captcha's median; captchas drawn with +-{jitter} px spread {spreads[jitter]:.1f} px")


def training_machine() -> str:
    """Where the readers will train and in which precision ``classifier.precision: auto`` picks there, and why."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision("auto", device)
    if device.type == "cuda":
        where, why = torch.cuda.get_device_name(device), ("the GPU computes bfloat16" if precision == "bfloat16"
                                                          else "the GPU has no bfloat16")
    else:
        where = f"{cpu_model()}, {available_cores()} cores, no GPU"
        why = "the CPU computes bfloat16 (amx_bf16 or avx512_bf16)" if precision == "bfloat16" else \
            "neither amx_bf16 nor avx512_bf16 on this CPU: emulated bfloat16 trains several times slower"
    return f"machine: {where}; readers train in {precision} (classifier.precision auto: {why})"


class _TargetDumper(yaml.SafeDumper):
    """Sections and keys one per line (room for a comment), lists on the line of their key."""


_TargetDumper.add_representer(list, lambda dumper, value: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", value, flow_style=True))


def target_text(request: SiteRequest, target: dict, notes: dict[str, str]) -> str:
    """targets/NAME.yaml: the params, each measured one with a comment saying what was measured."""
    lines = [f"# {request.name}: written by simcaptcha site; the values below were measured or given, not tuned.",
             f"# Run again: simcaptcha target targets/{request.name}.yaml --name {request.name}"]
    written = {f"{section}.{key}" for section, values in target.items() for key in values}
    lines += [f"# {key} left at its default: {note}" for key, note in notes.items() if key not in written]
    section = ""
    for line in yaml.dump(target, Dumper=_TargetDumper, sort_keys=False, width=10**6,
                          allow_unicode=True).splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        note = notes.get(f"{section}.{line.strip().split(':')[0]}") if line.startswith("  ") else None
        lines.append(line + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def collect_results(name: str) -> dict:
    """Copy the experiment's final reader and figures to sites/NAME/ and return the figures."""
    folder = Path("sites") / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODELS / "selftrained.safetensors", folder / "reader.safetensors")
    shutil.copy(METRICS / "evaluate.json", folder / "evaluate.json")
    return read_json(folder / "evaluate.json", "run the pipeline first")


def summary(name: str, figures: dict) -> str:
    """What the run read, measured and estimated, in a few lines."""
    answer = figures.get("selftrained", {})

    def percent(key: str) -> str:
        value = answer.get(key)
        return "n/a" if value is None else f"{100 * value:.1f} %"

    lines = [f"{name}: reader at sites/{name}/reader.safetensors, figures at sites/{name}/evaluate.json"]
    if answer.get("collapsed"):
        lines.append(f"  collapsed: {answer['most_common_share']:.0%} of the held-out pool read as "
                     f"{answer['most_common_reading']!r}; no result")
    else:
        lines.append(f"  estimated without labels: {percent('estimated_char_accuracy')} of characters, "
                     f"{percent('estimated_captcha_accuracy')} of whole captchas")
    if answer.get("count"):
        lines.append(f"  measured on {answer['count']} labelled captchas: {percent('char_accuracy')} of characters, "
                     f"{percent('captcha_accuracy')} of whole captchas (real labels used in training: "
                     f"{answer.get('real_labels_used', 0)})")
    return "\n".join(lines)
