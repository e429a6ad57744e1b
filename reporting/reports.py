"""Run reports: contact sheets of posters beside their neighbours, and a one-file HTML report.

:func:`contact_sheet` and :func:`html_report` are pure (bytes and dicts in, an image or a string
out). :func:`collect_run` assembles the report's dict from what the stages wrote (manifests,
duplicate and dead-letter tables, the index manifest, the nightly and evaluation reports, the
warehouse's neighbour table, the watch history, the poster TFRecords), tolerating missing parts;
:func:`contact_sheets_for` draws sheets from an index; :func:`write_report` writes the page.

The page has no external resources: CSS is inline, images are base64 PNG data URIs and the
scatter plot is inline SVG. Every figure taken from a manifest carries a ``data-key`` attribute
(``stage.scrape.written``, ``index.recall_at_10``, ``evaluation.popularity.HR@10``...) so tools
and tests can read the numbers back.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import math
import random
import re
import unicodedata
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from PIL import ImageOps

from models.lookup import film_label
from models.lookup import index_neighbours
from models.lookup import index_uri
from models.lookup import mean_ratings
from models.scann_index import MANIFEST_FILE
from models.vectors import read_vector_table
from models.vectors import vectors_glob
from schemas import DeadLetter
from schemas import DuplicateRecord
from schemas import NeighborRow
from storage.files import read_parquet_records
from storage.files import write_bytes
from storage.posters import read_posters
from transforms.manifest import OutputLayout
from transforms.manifest import read_manifest
from transforms.warehouse import Warehouse

TILE = (120, 178)
PAD = 8
LINE_HEIGHT = 12
CAPTION_LINES = 3
CAPTION_HEIGHT = CAPTION_LINES * LINE_HEIGHT + 4
SCATTER_SIZE = (640, 400)
SCATTER_MARGIN = (48, 16, 16, 40)  # left, top, right, bottom
_PAPER = (255, 255, 255)
_TILE_BACKGROUND = (228, 228, 228)
_INK = (24, 24, 24)
_MUTED = (110, 110, 110)
_STAGE_FIELDS = ("input_rows", "written", "duplicates", "dead_lettered", "already_present")

Tile = tuple[bytes | None, str, float]
"""One neighbour on a sheet: encoded image (None when unknown), label, score."""


def sheet_size(columns: int, rows: int, tile: tuple[int, int] = TILE) -> tuple[int, int]:
    """Pixel size of a sheet with ``columns`` tiles per row (the target included) and ``rows``."""
    width = PAD + columns * (tile[0] + PAD)
    height = PAD + rows * (tile[1] + CAPTION_HEIGHT + PAD)
    return width, height


def _drawable(text: str) -> str:
    """Text without combining accents (PIL's built-in font has ASCII glyphs only)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int, lines: int) -> list[str]:
    """Greedy word wrap into at most ``lines`` lines, the last one cut with an ellipsis."""
    out: list[str] = []
    words = text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        if len(out) == lines - 1 and words:
            line = f"{line} {' '.join(words)}"
            words = []
        out.append(_fit(line, draw, font, width))
    return out


def _wrap_name(text: str, draw: ImageDraw.ImageDraw, font, width: int, lines: int) -> list[str]:
    """Wrap a name without spaces (a model version) after its '_' and '-', into at most
    ``lines`` lines, the last one cut with an ellipsis."""
    out: list[str] = []
    pieces = re.findall(r"[^_\-\s]*[_\-\s]+|[^_\-\s]+$", text)
    while pieces and len(out) < lines:
        line = pieces.pop(0)
        while pieces and draw.textlength(line + pieces[0], font=font) <= width:
            line += pieces.pop(0)
        if len(out) == lines - 1 and pieces:
            line += "".join(pieces)
            pieces = []
        out.append(_fit(line.strip(), draw, font, width))
    return out


def _tile_image(data: bytes | None, tile: tuple[int, int]) -> Image.Image:
    canvas = Image.new("RGB", tile, _TILE_BACKGROUND)
    if data is None:
        return canvas
    try:
        with Image.open(io.BytesIO(data)) as opened:
            poster = ImageOps.contain(opened.convert("RGB"), tile, Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError):
        return canvas
    canvas.paste(poster, ((tile[0] - poster.width) // 2, (tile[1] - poster.height) // 2))
    return canvas


def _draw_tile(sheet, draw, font, x, y, tile, data, label, note) -> None:
    sheet.paste(_tile_image(data, tile), (x, y))
    if data is None:
        draw.text((x + 6, y + tile[1] // 2 - 6), "no image", fill=_MUTED, font=font)
    lines = _wrap(_drawable(label), draw, font, tile[0], CAPTION_LINES - 1)
    notes = _wrap_name(_drawable(note), draw, font, tile[0], CAPTION_LINES - len(lines))
    for i, line in enumerate(lines + notes):
        ink = _INK if i < len(lines) else _MUTED
        draw.text((x, y + tile[1] + 2 + i * LINE_HEIGHT), line, fill=ink, font=font)


def contact_sheet(
    target_image_bytes: bytes | None,
    target_label: str,
    neighbours: Sequence[Tile],
    baseline: Sequence[Tile] | None = None,
    tile: tuple[int, int] = TILE,
    names: tuple[str, str] = ("target", "baseline"),
) -> Image.Image:
    """A target poster beside its neighbours (titles and scores), baseline neighbours below."""
    columns = 1 + max(len(neighbours), len(baseline or ()))
    rows = 2 if baseline is not None else 1
    sheet = Image.new("RGB", sheet_size(columns, rows, tile), _PAPER)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    row_height = tile[1] + CAPTION_HEIGHT + PAD
    _draw_tile(sheet, draw, font, PAD, PAD, tile, target_image_bytes, target_label, names[0])
    for row, tiles in enumerate((neighbours, baseline or ())):
        y = PAD + row * row_height
        for col, (data, label, score) in enumerate(tiles, start=1):
            x = PAD + col * (tile[0] + PAD)
            _draw_tile(sheet, draw, font, x, y, tile, data, label, f"{score:.3f}")
    if baseline is not None:
        y = PAD + row_height + tile[1] // 2
        for i, line in enumerate(_wrap(_drawable(names[1]), draw, font, tile[0], 2)):
            draw.text((PAD, y + i * LINE_HEIGHT), line, fill=_INK, font=font)
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    """An image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class ContactSheet:
    """One film's contact sheet and its caption."""

    movie_id: int
    caption: str
    image: Image.Image


def contact_sheets_for(
    vectors_root: str,
    model_version: str,
    posters: str,
    movie_ids: Sequence[int] | None = None,
    sample: int = 4,
    seed: int = 0,
    k: int = 8,
    baseline_model_version: str | None = None,
    tile: tuple[int, int] = TILE,
) -> list[ContactSheet]:
    """Sheets for chosen films (or a seeded sample) from the index, baseline row optional."""
    films = read_posters(posters)
    if movie_ids is None:
        ids = read_vector_table(vectors_glob(vectors_root, model_version)).ids.tolist()
        candidates = sorted(m for m in ids if m in films)
        movie_ids = sorted(random.Random(seed).sample(candidates, min(sample, len(candidates))))
    lists = index_neighbours(vectors_root, model_version, movie_ids, k)
    missing = [m for m in movie_ids if m not in lists]
    if missing:
        raise ValueError(f"films {missing} have no vector in {model_version}; choose others")
    base_lists = (
        index_neighbours(vectors_root, baseline_model_version, movie_ids, k)
        if baseline_model_version
        else {}
    )

    def tiles(pairs: list[tuple[int, float]]) -> list[Tile]:
        images = [films[n].image_jpeg if n in films else None for n, _ in pairs]
        return [(im, film_label(n, films), s) for im, (n, s) in zip(images, pairs, strict=True)]

    sheets = []
    for movie_id in movie_ids:
        target = films.get(movie_id)
        image = contact_sheet(
            target.image_jpeg if target else None,
            film_label(movie_id, films),
            tiles(lists[movie_id]),
            tiles(base_lists.get(movie_id, [])) if baseline_model_version else None,
            tile,
            names=(model_version, f"baseline: {baseline_model_version}"),
        )
        caption = f"{film_label(movie_id, films)} — top {k} of {model_version}"
        if baseline_model_version:
            caption += f" (below: {baseline_model_version})"
        sheets.append(ContactSheet(movie_id, caption, image))
    return sheets


def write_contact_sheets(sheets: Sequence[ContactSheet], folder: str) -> list[str]:
    """Write each sheet as ``contact-{movie_id}.png`` under a local or gs:// folder."""
    paths = []
    for sheet in sheets:
        path = FileSystems.join(folder, f"contact-{sheet.movie_id}.png")
        write_bytes(path, png_bytes(sheet.image))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- collecting


def _read_json(path: str) -> dict | None:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def _latest(pattern: str) -> str | None:
    paths = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    return paths[-1] if paths else None


def _seconds(manifest: dict) -> float | None:
    try:
        started = datetime.datetime.fromisoformat(manifest["started_at"])
        finished = datetime.datetime.fromisoformat(manifest["finished_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return round((finished - started).total_seconds(), 3)


def _latest_manifest(root: str) -> tuple[OutputLayout, dict] | None:
    runs = OutputLayout.completed_runs(root)
    if not runs:
        return None
    layout = OutputLayout(root, runs[-1])
    return layout, read_manifest(layout.manifest_path)


def _stage_row(name: str, manifest: dict) -> dict:
    row = {"name": name, "run_id": manifest.get("run_id"), "seconds": _seconds(manifest)}
    row.update({field: manifest.get(field) for field in _STAGE_FIELDS})
    row["accounting_ok"] = manifest.get("accounting_ok")
    return row


def _dead_letter_rows(source: str, layout: OutputLayout, manifest: dict) -> list[dict]:
    reasons = manifest.get("counts", {}).get("dead_letter_reasons", {})
    examples: dict[str, str] = {}
    for dead in read_parquet_records(layout.table_glob(DeadLetter.TABLE, ".parquet"), DeadLetter):
        examples.setdefault(f"{dead.stage}/{dead.reason}", dead.detail)
    return [
        {"source": source, "reason": r, "count": n, "example": examples.get(r, "")}
        for r, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    ]


def _duplicate_groups(layout: OutputLayout, films: dict, limit: int) -> list[dict]:
    records = read_parquet_records(
        layout.table_glob(DuplicateRecord.TABLE, ".parquet"), DuplicateRecord
    )
    groups: dict[int, list[DuplicateRecord]] = {}
    for record in records:
        groups.setdefault(record.canonical_movie_id, []).append(record)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))[:limit]
    return [
        {
            "canonical_movie_id": canonical,
            "canonical_label": film_label(canonical, films),
            "dropped": [
                {
                    "movie_id": d.movie_id,
                    "label": film_label(d.movie_id, films),
                    "kind": d.kind,
                    "distance": d.distance,
                    "confirmation": d.confirmation,
                }
                for d in sorted(dropped, key=lambda d: d.movie_id)
            ],
        }
        for canonical, dropped in ordered
    ]


def _neighbour_pairs(nightly: dict | None, vectors_root: str, version: str) -> tuple[list, str]:
    """(movie id, neighbour id, score) of the published table, else of the index's top 10."""
    if nightly and str(nightly.get("warehouse", "")).startswith("duckdb://"):
        run_date = datetime.date.fromisoformat(nightly["run_date"])
        folder = Warehouse.parse(nightly["warehouse"]).partition_dir(NeighborRow, run_date)
        rows = read_parquet_records(FileSystems.join(folder, "*.parquet"), NeighborRow)
        rows = [r for r in rows if r.model_version == version]
        if rows:
            pairs = sorted((r.movie_id, r.neighbor_id, r.score) for r in rows)
            return pairs, f"the neighbors table of {run_date.isoformat()}"
    lists = index_neighbours(vectors_root, version, None, 10)
    pairs = sorted((m, n, s) for m, found in lists.items() for n, s in found)
    return pairs, f"the top 10 of the {version} index"


def collect_run(
    scrape_output: str,
    vectors_root: str,
    model_version: str,
    nightly_output: str | None = None,
    watch_history: str | None = None,
    posters: str | None = None,
    *,
    baseline_model_version: str | None = None,
    run_date: str | None = None,
    contact_sheets: Sequence[ContactSheet] = (),
    stage_seconds: dict[str, float] | None = None,
    duplicate_groups: int = 10,
    scatter_max_points: int = 5000,
    seed: int = 0,
) -> dict:
    """The report's dict, read from a run's manifests and reports (missing parts are None)."""
    films = read_posters(posters or scrape_output)
    run: dict = {
        "title": f"poster-recs run report: {model_version}",
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model_version": model_version,
        "baseline_model_version": baseline_model_version,
        "stages": [],
        "dead_letters": [],
        "duplicate_groups": [],
        "index": None,
        "nightly": None,
        "evaluation": None,
        "contact_sheets": [
            {"caption": s.caption, "png": png_bytes(s.image)} for s in contact_sheets
        ],
        "scatter": None,
    }
    scrape = _latest_manifest(scrape_output)
    if scrape is not None:
        layout, manifest = scrape
        run["stages"].append(_stage_row("scrape", manifest))
        run["dead_letters"] += _dead_letter_rows("scrape", layout, manifest)
        run["duplicate_groups"] = _duplicate_groups(layout, films, duplicate_groups)
    for version in filter(None, (model_version, baseline_model_version)):
        stages, dead_letters, index = _model_rows(vectors_root, version)
        run["stages"] += stages
        run["dead_letters"] += dead_letters
        if version == model_version:
            run["index"] = index
    if nightly_output:
        nightly, evaluation = _nightly_reports(nightly_output, model_version, run_date)
        run["nightly"], run["evaluation"] = nightly, evaluation
    if run["nightly"] is not None:
        run["stages"].append(_nightly_stage_row(run["nightly"]))
    for row in run["stages"]:
        row["seconds"] = (stage_seconds or {}).get(row["name"], row.get("seconds"))
    if watch_history:
        pairs, source = _neighbour_pairs(run["nightly"], vectors_root, model_version)
        run["scatter"] = scatter_points(
            pairs, source, films, mean_ratings(watch_history), scatter_max_points, seed
        )
    return run


def _model_rows(vectors_root: str, version: str) -> tuple[list[dict], list[dict], dict | None]:
    """A model version's embed and index stage rows, its dead letters, and its index manifest."""
    stages, dead_letters = [], []
    embedded = _latest_manifest(FileSystems.join(vectors_root, version))
    if embedded is not None:
        layout, manifest = embedded
        stages.append(_stage_row(f"embed:{version}", manifest))
        dead_letters += _dead_letter_rows(f"embed:{version}", layout, manifest)
    info = _read_json(FileSystems.join(index_uri(vectors_root, version), MANIFEST_FILE))
    if info is not None:
        stages.append(
            {
                "name": f"index:{version}",
                "run_id": None,  # an index has no run; its build time is in its manifest
                "input_rows": info.get("n"),
                "written": info.get("n"),
                "seconds": info.get("build_seconds"),
            }
        )
    return stages, dead_letters, info


def _nightly_reports(
    nightly_output: str, model_version: str, run_date: str | None
) -> tuple[dict | None, dict | None]:
    """The nightly report of the run date (the latest without one) and the model version's
    latest evaluation report, each None when missing."""
    name = f"nightly-{run_date}.json" if run_date else "nightly-*.json"
    path = _latest(FileSystems.join(nightly_output, "reports", name))
    nightly = _read_json(path) if path else None
    pattern = FileSystems.join(nightly_output, "reports", f"evaluation-{model_version}-*.json")
    path = _latest(pattern)
    return nightly, _read_json(path) if path else None


def _nightly_stage_row(nightly: dict) -> dict:
    loaded = nightly.get("rows_loaded", {})
    return {
        "name": "nightly",
        "run_id": nightly.get("run_date"),
        "input_rows": nightly.get("neighbors", {}).get("films_queried"),
        "written": sum(loaded.values()) if loaded else None,
        "seconds": None,
    }


def scatter_points(
    pairs: Sequence[tuple[int, int, float]],
    source: str,
    films: dict,
    ratings_and_users: tuple[dict[int, float], int],
    max_points: int = 5000,
    seed: int = 0,
) -> dict:
    """The scatter plot's data: each (film, neighbour, score) pair whose neighbour has a year and
    a mean rating, at most ``max_points`` of them (a seeded sample), and what they came from."""
    ratings, users = ratings_and_users
    points = [
        {
            "movie_id": m,
            "neighbor_id": n,
            "score": s,
            "year": films[n].year,
            "rating": round(ratings[n], 4),
        }
        for m, n, s in pairs
        if n in ratings and n in films and films[n].year
    ]
    plotted = points
    if len(points) > max_points:
        plotted = sorted(
            random.Random(seed).sample(points, max_points),
            key=lambda p: (p["movie_id"], p["neighbor_id"]),
        )
    return {
        "points": plotted,
        "pairs": len(pairs),
        "pairs_with_data": len(points),
        "users": users,
        "source": source,
    }


# ---------------------------------------------------------------------------- rendering

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#1b1b1b;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}th{background:#f5f5f5}td.l,th.l{text-align:left}.muted{color:#777}
.bad{color:#b00020;font-weight:600}.best{font-weight:700}figure{margin:12px 0}
figure img{max-width:100%;border:1px solid #ddd}code{font-size:12px}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object, key: str | None = None, cls: str = "") -> str:
    shown = "—" if value is None else value
    if isinstance(value, float):
        shown = f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    attrs = f' data-key="{_esc(key)}"' if key else ""
    attrs += f' class="{cls}"' if cls else ""
    return f"<td{attrs}>{_esc(shown)}</td>"


def _table(header: Sequence[str], rows: Sequence[str], left: int = 1) -> str:
    heads = "".join(
        f'<th class="l">{_esc(h)}</th>' if i < left else f"<th>{_esc(h)}</th>"
        for i, h in enumerate(header)
    )
    return f"<table><tr>{heads}</tr>{''.join(f'<tr>{r}</tr>' for r in rows)}</table>"


def _missing(what: str) -> str:
    return f'<p class="muted">No {_esc(what)} found for this run.</p>'


def _stages_html(stages: Sequence[dict]) -> str:
    if not stages:
        return _missing("stage manifests")
    rows = []
    for stage in stages:
        name = stage["name"]
        cells = _cell(stage["name"], cls="l") + _cell(stage.get("run_id"), cls="l")
        cells += "".join(_cell(stage.get(f), f"stage.{name}.{f}") for f in _STAGE_FIELDS)
        seconds = stage.get("seconds")
        cells += _cell(None if seconds is None else f"{seconds:.1f}", f"stage.{name}.seconds")
        ok = stage.get("accounting_ok")
        if ok is None:
            cells += "<td>—</td>"
        else:
            cells += "<td>OK</td>" if ok else '<td class="bad">VIOLATED</td>'
        rows.append(cells)
    header = [
        "stage",
        "run",
        "input rows",
        "written",
        "duplicates",
        "dead-lettered",
        "already present",
        "seconds",
        "identity",
    ]
    return _table(header, rows, left=2)


def _dead_letters_html(dead: Sequence[dict]) -> str:
    if not dead:
        return '<p class="muted">No dead letters.</p>'
    rows = [
        _cell(d["source"], cls="l")
        + _cell(d["reason"], cls="l")
        + _cell(d["count"], f"dead_letter.{d['source']}.{d['reason']}")
        + f'<td class="l"><code>{_esc(clip(d["example"], 160))}</code></td>'
        for d in dead
    ]
    return _table(["stage", "reason", "count", "example"], rows, left=2)


def _duplicates_html(groups: Sequence[dict]) -> str:
    if not groups:
        return '<p class="muted">No duplicates were dropped.</p>'
    rows = []
    for group in groups:
        dropped = "; ".join(
            f"{d['movie_id']} {d['label']} ({d['kind']}"
            + (f", {d['distance']} bits" if d["kind"] == "near" else "")
            + (f", thumbnails {d['confirmation']:.3f}" if d.get("confirmation") is not None else "")
            + ")"
            for d in group["dropped"]
        )
        rows.append(
            _cell(group["canonical_movie_id"], f"duplicates.{group['canonical_movie_id']}")
            + _cell(group["canonical_label"], cls="l")
            + _cell(dropped, cls="l")
        )
    return _table(
        ["kept film", "title", "dropped (kind, hash bits, thumbnail correlation)"], rows, left=0
    )


def _index_html(info: dict | None) -> str:
    if not info:
        return _missing("index manifest")
    keys = (
        "model_version",
        "n",
        "dim",
        "recall_at_10",
        "recall_sample",
        "recall_floor",
        "build_seconds",
        "built_at",
    )
    rows = [_cell(k, cls="l") + _cell(info.get(k), f"index.{k}") for k in keys]
    params = ", ".join(f"{k}={v}" for k, v in sorted(info.get("params", {}).items()))
    rows.append(_cell("params", cls="l") + _cell(params, "index.params", cls="l"))
    return _table(["field", "value"], rows)


def _nightly_html(nightly: dict | None) -> str:
    if not nightly:
        return _missing("nightly report")
    rows = []
    for section in ("neighbors", "candidates", "rows_loaded"):
        for key, value in sorted((nightly.get(section) or {}).items()):
            rows.append(
                _cell(f"{section}.{key}", cls="l") + _cell(value, f"nightly.{section}.{key}")
            )
    where = f"Run date {nightly.get('run_date')}, warehouse {nightly.get('warehouse')}."
    head = f"<p>{_esc(where)}</p>"
    return head + _table(["counter", "value"], rows)


def _evaluation_html(report: dict | None) -> str:
    if not report:
        return _missing("evaluation report")
    results = report.get("results", {})
    metrics = sorted({m for r in results.values() for m in r}, key=lambda m: (m[:2], len(m), m))
    best = {m: max(r.get(m, -math.inf) for r in results.values()) for m in metrics}
    rows = [
        _cell(method, cls="l")
        + "".join(
            _cell(r.get(m), f"evaluation.{method}.{m}", "best" if r.get(m) == best[m] else "")
            for m in metrics
        )
        for method, r in results.items()
    ]
    sampled = ""
    if report.get("users_in_history") and report.get("users_sampled", 0) < report.get(
        "users_in_history", 0
    ):
        sampled = (
            f" (a seeded sample of {_esc(report.get('users_sampled'))} of the "
            f"{_esc(report.get('users_in_history'))} users, --eval_users; co-watch model and "
            "popularity from every user)"
        )
    head = (
        f"<p>Leave-last-out over {_esc(report.get('users_evaluated'))} users{sampled} and "
        f"{_esc(report.get('catalogue_films'))} films with vectors; the best figure per "
        "metric is bold.</p>"
    )
    model = report.get("cowatch_model")
    if model:
        head += (
            "<p>The hybrid's co-watch neighbours come from "
            f"<code>{_esc(model.get('model'))}</code> (lambda {_esc(model.get('ease_lambda'))}; "
            "the co-watch stage's --cowatch_model); the co-watch kNN baseline is the cosine of "
            "co-watch counts. \"hybrid, poster weight 0\" is the tuned blend without posters: "
            "the hybrid minus it is what posters add warm.</p>"
        )
    return head + _table(["method", *metrics], rows) + _cold_and_blend_html(report)


def _cold_and_blend_html(report: dict) -> str:
    """The cold-start table, the bootstrap intervals and the blend chosen offline."""
    parts = []
    cold = report.get("cold_start")
    if cold:
        k = cold.get("k")
        rows = [
            _cell(method, cls="l") + _cell(value, f"cold_start.{method}.Recall@{k}")
            for method, value in cold.get("recall", {}).items()
        ]
        parts.append(
            f"<p>Cold start ({_esc(cold.get('holdout'))}): {_esc(cold.get('hidden_films'))} "
            f"films with every watch hidden; Recall@{_esc(k)} over the hidden films.</p>"
            + _table(["method", f"Recall@{k}"], rows)
        )
        if cold.get("popularity_weight") is not None:
            parts.append(
                "<p>Weight of the popularity estimated from posters, chosen on a validation "
                f"hold-out of visible films: {_esc(cold['popularity_weight'])}.</p>"
            )
    intervals = report.get("intervals") or {}
    if intervals:
        rows = [
            _cell(name, cls="l") + _cell(d.get("difference"), f"interval.{name}")
            + _cell(d.get("low")) + _cell(d.get("high"))
            for name, d in intervals.items()
        ]
        parts.append(_table(["difference", "mean", "95% low", "95% high"], rows))
    if report.get("blend"):
        blend = ", ".join(f"{k} {v}" for k, v in sorted(report["blend"].items()))
        parts.append(f"<p>Blend chosen on the time-ordered validation split: {_esc(blend)}.</p>")
    return "".join(parts)


def _sheets_html(sheets: Sequence[dict]) -> str:
    if not sheets:
        return _missing("contact sheets")
    return "".join(
        f'<figure><img alt="{_esc(s["caption"])}" src="data:image/png;base64,'
        f'{base64.b64encode(s["png"]).decode("ascii")}"><figcaption>{_esc(s["caption"])}'
        "</figcaption></figure>"
        for s in sheets
    )


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


def scatter_svg(points: Sequence[dict], size: tuple[int, int] = SCATTER_SIZE) -> str:
    """Inline SVG: one circle per (film, neighbour) pair at the neighbour's year and rating."""
    width, height = size
    left, top, right, bottom = SCATTER_MARGIN
    years = [p["year"] for p in points] or [2000]
    x0, x1 = min(years) - 1, max(years) + 1
    ratings = [p["rating"] for p in points] or [0.5, 5.0]
    # The rating axis spans the data (to the half star), not the whole 0.5-5 scale.
    y0 = max(0.5, math.floor(min(ratings) * 2) / 2)
    y1 = min(5.0, math.ceil(max(ratings) * 2) / 2)
    if y1 - y0 < 0.5:
        y0, y1 = max(0.5, y0 - 0.25), min(5.0, y1 + 0.25)

    def sx(year: float) -> float:
        return left + (year - x0) / (x1 - x0) * (width - left - right)

    def sy(rating: float) -> float:
        return height - bottom - (rating - y0) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="scatter" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-points="{len(points)}" '
        'role="img" aria-label="neighbours: year against mean rating">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
    ]
    tick = 0.5 if y1 - y0 > 1.5 else 0.25
    for index in range(math.ceil(y0 / tick), math.floor(y1 / tick) + 1):
        rating = index * tick
        parts.append(
            f'<text x="{left - 8}" y="{sy(rating) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{rating:g}</text>'
        )
    step = 10 if x1 - x0 > 20 else 2
    for year in range(math.ceil(x0 / step) * step, int(x1) + 1, step):
        x = sx(year)
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" font-size="11" '
            f'text-anchor="middle">{year}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" font-size="12" '
        'text-anchor="middle">neighbour release year</text>'
    )
    parts.append(
        f'<text x="12" y="{(top + height - bottom) / 2}" font-size="12" '
        f'transform="rotate(-90 12 {(top + height - bottom) / 2})" '
        'text-anchor="middle">neighbour mean rating</text>'
    )
    # Thousands of points in a few hundred pixels: smaller and fainter, so density shows.
    radius, opacity = (3, 0.45) if len(points) <= 500 else (1.6, 0.25)
    for p in points:
        parts.append(
            f'<circle class="pt" data-pair="{p["movie_id"]}-{p["neighbor_id"]}" '
            f'cx="{sx(p["year"]):.1f}" cy="{sy(p["rating"]):.1f}" r="{radius}" '
            f'fill="#3366aa" fill-opacity="{opacity}"><title>{p["movie_id"]} → {p["neighbor_id"]}: '
            f"{p['year']}, {p['rating']:.2f} (score {p['score']:.3f})</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _scatter_html(scatter: dict | None) -> str:
    if not scatter:
        return _missing("watch history for the scatter plot")
    note = (
        f"<p>{len(scatter['points'])} of {scatter['pairs']} neighbour pairs from "
        f"{_esc(scatter['source'])}: each point is a (film, neighbour) pair at the neighbour's "
        f"release year and its mean rating over {scatter['users']} users "
        f"({scatter['pairs_with_data']} pairs have both).</p>"
    )
    return note + scatter_svg(scatter["points"])


def html_report(run: dict) -> str:
    """The run as one self-contained HTML page (inline CSS, PNG data URIs, inline SVG)."""
    sections = [
        ("stages", "Stages: counts and timings", _stages_html(run.get("stages", []))),
        ("dead-letters", "Dead letters by reason", _dead_letters_html(run.get("dead_letters", []))),
        (
            "duplicates",
            "Example duplicate groups",
            _duplicates_html(run.get("duplicate_groups", [])),
        ),
        ("index", "Index", _index_html(run.get("index"))),
        ("nightly", "Nightly neighbours and candidates", _nightly_html(run.get("nightly"))),
        (
            "evaluation",
            "Candidate evaluation against the baselines",
            _evaluation_html(run.get("evaluation")),
        ),
        ("contact-sheets", "Contact sheets", _sheets_html(run.get("contact_sheets", []))),
        (
            "scatter-plot",
            "Neighbours: release year against mean rating",
            _scatter_html(run.get("scatter")),
        ),
    ]
    body = "".join(
        f'<section id="{sid}"><h2>{_esc(title)}</h2>{content}</section>'
        for sid, title, content in sections
    )
    title = _esc(run.get("title", "poster-recs run report"))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_CSS}</style></head><body><h1>{title}</h1>"
        f'<p class="muted">Generated {_esc(run.get("generated_at", ""))}; model '
        f"{_esc(run.get('model_version', ''))}"
        + (
            f", baseline {_esc(run['baseline_model_version'])}"
            if run.get("baseline_model_version")
            else ""
        )
        + f".</p>{body}</body></html>\n"
    )


def write_report(run: dict, path: str) -> str:
    """Write the run's HTML report to a local or gs:// path; returns the path."""
    write_bytes(path, html_report(run).encode("utf-8"))
    return path
