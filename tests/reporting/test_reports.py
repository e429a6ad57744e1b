"""Contact sheets and the HTML run report, checked against the run's own manifests."""

from __future__ import annotations

import base64
import glob
import html
import html.parser
import io
import json
import re
import types
import xml.etree.ElementTree as ET

import duckdb
import pytest
from PIL import Image

from models.lookup import index_neighbours
from models.vectors import shared_poster_groups
from models.vectors import vectors_glob
from pipelines.evaluate import label_of
from reporting import reports
from reporting.reports import CAPTION_HEIGHT
from reporting.reports import PAD
from reporting.reports import TILE
from synthetic.catalog import make_catalog
from tests.pipelines.test_similar import RUN_DATE
from tests.pipelines.test_similar import build_world

SVG = "{http://www.w3.org/2000/svg}"


class DataKeys(html.parser.HTMLParser):
    """The text of every element that carries a data-key attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        self._open.append(dict(attrs).get("data-key"))

    def handle_endtag(self, tag):
        self._open.pop()

    def handle_data(self, data):
        if self._open and self._open[-1] is not None:
            self.values[self._open[-1]] = self.values.get(self._open[-1], "") + data


def data_keys(page: str) -> dict[str, str]:
    parser = DataKeys()
    parser.feed(page)
    return parser.values


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.getbasetemp() / "poster_world")


@pytest.fixture(scope="module")
def sheets(world):
    return reports.contact_sheets_for(
        str(world.vectors), world.model_version, str(world.scrape_output), sample=2, seed=7, k=4,
        baseline_model_version=world.pixels_version,
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(world, sheets, tmp_path_factory):
    run = reports.collect_run(
        str(world.scrape_output), str(world.vectors), world.model_version, str(world.nightly),
        str(world.ratings), None, baseline_model_version=world.pixels_version,
        contact_sheets=sheets,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("report") / "report.html"
    reports.write_report(run, str(path))
    return run, path.read_text(encoding="utf-8")


def poster_jpeg(index: int) -> bytes:
    catalog = make_catalog(3, seed=5)
    return catalog.poster_bytes(catalog.films[index].movie_id)


def test_a_contact_sheet_has_a_tile_per_neighbour_and_decodes():
    neighbours = [(poster_jpeg(i % 3), f"Film {i} (1999)", 0.9 - i / 10) for i in range(5)]
    sheet = reports.contact_sheet(poster_jpeg(0), "Target (2001)", neighbours)
    decoded = Image.open(io.BytesIO(reports.png_bytes(sheet)))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert decoded.size == (PAD + 6 * (TILE[0] + PAD), PAD + TILE[1] + CAPTION_HEIGHT + PAD)
    assert decoded.size == (776, 234)
    target = decoded.crop((PAD, PAD, PAD + TILE[0], PAD + TILE[1]))
    assert len(set(target.getdata())) > 50  # the poster is drawn, not a blank tile


def test_the_baseline_adds_a_second_row():
    neighbours = [(poster_jpeg(1), "A", 0.8), (poster_jpeg(2), "B", 0.7)]
    baseline = [(poster_jpeg(2), "B", 0.9), (None, "C", 0.5), (b"not an image", "D", 0.4)]
    sheet = reports.contact_sheet(poster_jpeg(0), "Target", neighbours, baseline, tile=(60, 90))
    decoded = Image.open(io.BytesIO(reports.png_bytes(sheet)))
    assert decoded.size == reports.sheet_size(4, 2, (60, 90))
    assert decoded.size == (PAD + 4 * 68, PAD + 2 * (90 + CAPTION_HEIGHT + PAD))


def test_captions_stay_under_their_own_poster():
    """A long model version under the target poster wraps inside its tile: nothing is drawn in
    the gap between the target's caption and its first neighbour's (title, score)."""
    neighbours = [(poster_jpeg(1), "The Labyrinth and the Island (1976)", 0.995)]
    version = "poster_embedding_small_cnn-37e3236f612e"
    sheet = reports.contact_sheet(poster_jpeg(0), "Last Symphony (2022)", neighbours,
                                  names=(version, "baseline"))  # fmt: skip
    caption_top = PAD + TILE[1]
    gap = sheet.crop((PAD + TILE[0], caption_top, 2 * PAD + TILE[0], caption_top + CAPTION_HEIGHT))
    assert set(gap.getdata()) == {(255, 255, 255)}
    under_target = sheet.crop((PAD, caption_top, PAD + TILE[0], caption_top + CAPTION_HEIGHT))
    assert len(set(under_target.getdata())) > 2  # the caption is drawn there


def test_sheets_from_the_index_are_deterministic(world, sheets):
    again = reports.contact_sheets_for(
        str(world.vectors), world.model_version, str(world.scrape_output), sample=2, seed=7, k=4,
        baseline_model_version=world.pixels_version,
    )  # fmt: skip
    assert [s.movie_id for s in again] == [s.movie_id for s in sheets]
    assert len(sheets) == 2 and all(s.movie_id in world.written for s in sheets)
    for sheet, other in zip(sheets, again, strict=True):
        assert sheet.image.size == reports.sheet_size(5, 2) == (648, 460)
        assert sheet.image.tobytes() == other.image.tobytes()
    chosen = reports.contact_sheets_for(str(world.vectors), world.model_version,
                                        str(world.scrape_output), movie_ids=[world.written[0]],
                                        k=3)  # fmt: skip
    assert [s.movie_id for s in chosen] == [world.written[0]]
    assert chosen[0].image.size == reports.sheet_size(4, 1)
    with pytest.raises(ValueError, match="have no vector"):
        reports.contact_sheets_for(str(world.vectors), world.model_version,
                                   str(world.scrape_output), movie_ids=[10**9])  # fmt: skip


def test_the_report_shows_the_scrape_manifest(world, report):
    _, page = report
    (path,) = glob.glob(str(world.scrape_output / "manifests" / "run-*.json"))
    with open(path) as handle:
        manifest = json.load(handle)
    values = data_keys(page)
    for field in ("input_rows", "written", "duplicates", "dead_lettered", "already_present"):
        assert int(values[f"stage.scrape.{field}"]) == manifest[field], field
    reasons = manifest["counts"]["dead_letter_reasons"]
    assert reasons and manifest["dead_lettered"] == sum(reasons.values())
    shown = {k.split(".", 2)[2]: int(v) for k, v in values.items()
             if k.startswith("dead_letter.scrape.")}  # fmt: skip
    assert shown == reasons


def test_the_report_shows_the_duplicate_groups(world, report):
    _, page = report
    table = str(world.scrape_output / "duplicates" / "*" / "*.parquet")
    rows = duckdb.sql(
        f"select canonical_movie_id, movie_id, kind, distance, confirmation from '{table}'"
    ).fetchall()
    assert len(rows) == 2
    values = data_keys(page)
    assert {int(k.split(".")[1]) for k in values if k.startswith("duplicates.")} == {
        canonical for canonical, *_ in rows
    }
    for _, dropped, kind, distance, confirmation in rows:
        film = world.catalog.film(dropped)
        shown = f"{dropped} {film.title} ({film.year}) ({kind}"
        if kind == "near":
            shown += f", {distance} bits, thumbnails {confirmation:.3f})"
        assert html.escape(shown, quote=True) in page, shown


def test_the_report_shows_index_recall_and_the_evaluation(world, report):
    _, page = report
    values = data_keys(page)
    index_manifest = world.vectors / world.model_version / "index" / "index_manifest.json"
    info = json.loads(index_manifest.read_text())
    assert float(values["index.recall_at_10"]) == pytest.approx(info["recall_at_10"], abs=1e-4)
    assert int(values["index.n"]) == info["n"] == len(world.written)
    (path,) = glob.glob(str(world.nightly / "reports" / f"evaluation-{world.model_version}-*.json"))
    with open(path) as handle:
        results = json.load(handle)["results"]
    methods = {f"poster kNN: {label_of(v)}" for v in (world.model_version, world.pixels_version)}
    assert set(results) == methods | {"popularity", "random", "co-watch kNN"}
    for method, metrics in results.items():
        for metric in ("HR@10", "HR@100", "NDCG@10"):
            shown = float(values[f"evaluation.{method}.{metric}"])
            assert shown == pytest.approx(metrics[metric], abs=5e-5), (method, metric)
    nightly = json.loads((world.nightly / "reports" / f"nightly-{RUN_DATE}.json").read_text())
    assert int(values["nightly.rows_loaded.neighbors"]) == nightly["rows_loaded"]["neighbors"]


def test_the_report_embeds_the_contact_sheets(sheets, report):
    _, page = report
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(sheets) == 2
    for uri, sheet in zip(uris, sheets, strict=True):
        decoded = Image.open(io.BytesIO(base64.b64decode(uri)))
        decoded.load()
        assert decoded.size == sheet.image.size
        assert decoded.convert("RGB").tobytes() == sheet.image.tobytes()


def test_the_scatter_has_a_point_per_neighbour_pair(world, report):
    run, page = report
    table = glob.glob(str(world.nightly / "warehouse_parquet" / "neighbors" / "*" / "*.parquet"))
    pairs = duckdb.sql(
        f"select n.movie_id, n.neighbor_id from read_parquet({table}) n "
        f"join (select distinct movieId from read_csv('{world.ratings}')) r "
        "on r.movieId = n.neighbor_id order by 1, 2"
    ).fetchall()
    year = {f.movie_id: f.year for f in world.catalog.films}
    expected = {f"{m}-{n}" for m, n in pairs if n in world.written and year[n]}
    assert 0 < len(expected) < 10 * len(world.written)
    svg_text = re.search(r"<svg.*?</svg>", page, re.S).group(0)
    svg = ET.fromstring(svg_text)
    circles = [c for c in svg.iter(f"{SVG}circle") if c.get("class") == "pt"]
    assert int(svg.get("data-points")) == len(circles) == len(expected)
    assert {c.get("data-pair") for c in circles} == expected
    assert run["scatter"]["pairs"] == 10 * len(world.written)


def test_the_report_is_self_contained(report):
    _, page = report
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_a_report_of_a_partial_run_says_what_is_missing():
    page = reports.html_report({"title": "empty", "stages": [], "scatter": None})
    assert "No stage manifests found" in page and "No index manifest found" in page
    assert "No evaluation report found" in page and "<svg" not in page


def test_the_scatter_axes_cover_the_points():
    points = [
        {"movie_id": 1, "neighbor_id": 2, "score": 0.9, "year": 1950, "rating": 0.5},
        {"movie_id": 1, "neighbor_id": 3, "score": 0.8, "year": 2020, "rating": 5.0},
    ]
    svg = ET.fromstring(reports.scatter_svg(points, size=(400, 300)))
    xs = [float(c.get("cx")) for c in svg.iter(f"{SVG}circle")]
    ys = [float(c.get("cy")) for c in svg.iter(f"{SVG}circle")]
    left, top, right, bottom = reports.SCATTER_MARGIN
    assert all(left < x < 400 - right for x in xs) and xs[0] < xs[1]
    assert ys == [300 - bottom, top]  # lowest rating at the bottom axis, 5.0 at the top


def test_a_run_without_nightly_outputs_still_reports(world):
    run = reports.collect_run(
        str(world.scrape_output), str(world.vectors), world.pixels_version, None,
        str(world.ratings), stage_seconds={"scrape": 12.5},
    )  # fmt: skip
    assert run["nightly"] is None and run["evaluation"] is None and run["contact_sheets"] == []
    assert run["index"]["model_version"] == world.pixels_version
    assert [s["name"] for s in run["stages"]] == [
        "scrape", f"embed:{world.pixels_version}", f"index:{world.pixels_version}",
    ]  # fmt: skip
    assert run["stages"][0]["seconds"] == 12.5
    assert run["stages"][2]["run_id"] is None  # an index has no run (not its build time)
    assert run["scatter"]["source"] == f"the top 10 of the {world.pixels_version} index"
    assert run["scatter"]["pairs"] == 10 * len(world.written)
    values = data_keys(reports.html_report(run))
    assert values["stage.scrape.seconds"] == "12.5"
    assert "No nightly report found" in reports.html_report(run)


def test_scatter_points_keep_pairs_with_a_year_and_a_rating():
    films = {2: types.SimpleNamespace(year=1999), 3: types.SimpleNamespace(year=None),
             4: types.SimpleNamespace(year=2001)}  # fmt: skip
    pairs = [(1, 2, 0.9), (1, 3, 0.8), (1, 4, 0.7), (1, 5, 0.6)]
    scatter = reports.scatter_points(pairs, "the index", films, ({2: 3.5, 3: 4.0, 5: 2.0}, 7))
    assert scatter == {
        "points": [{"movie_id": 1, "neighbor_id": 2, "score": 0.9, "year": 1999, "rating": 3.5}],
        "pairs": 4, "pairs_with_data": 1, "users": 7, "source": "the index",
    }  # fmt: skip


def test_scatter_points_are_a_seeded_sample_when_there_are_too_many():
    films = {n: types.SimpleNamespace(year=1990 + n % 20) for n in range(100)}
    pairs = [(m, n, 0.5) for m in range(10) for n in range(100)]
    ratings = ({n: 3.0 for n in range(100)}, 5)
    first = reports.scatter_points(pairs, "x", films, ratings, max_points=50, seed=1)
    assert len(first["points"]) == 50 and first["pairs_with_data"] == 1000
    assert first == reports.scatter_points(pairs, "x", films, ratings, max_points=50, seed=1)
    keys = [(p["movie_id"], p["neighbor_id"]) for p in first["points"]]
    assert keys == sorted(keys)


def test_sheet_neighbours_never_include_a_films_shared_poster_twin(world):
    """Films that share a poster (planted duplicates) are never each other's neighbours in the
    lists contact sheets draw (as in the nightly tables); each still gets its k."""
    path_glob = vectors_glob(str(world.vectors), world.model_version)
    shared = shared_poster_groups(path_glob)
    assert shared, "the synthetic world plants duplicate posters"
    lists = index_neighbours(str(world.vectors), world.model_version, sorted(shared), 4)
    for film, group in shared.items():
        assert [n for n, _ in lists[film] if shared.get(n, n) == group] == []
        assert len(lists[film]) == 4


def test_the_rating_axis_spans_the_data_and_dense_plots_use_fainter_points():
    points = [{"movie_id": 1, "neighbor_id": n, "score": 0.5, "year": 1990 + n % 30,
               "rating": 2.9 + 1.4 * (n % 100) / 99} for n in range(2000)]  # fmt: skip
    svg = ET.fromstring(reports.scatter_svg(points, size=(400, 300)))
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert "2.5" in labels and "4.5" in labels and "1" not in labels and "5" not in labels
    ys = [float(c.get("cy")) for c in svg.iter(f"{SVG}circle")]
    left, top, right, bottom = reports.SCATTER_MARGIN
    assert max(ys) - min(ys) > 0.5 * (300 - top - bottom)  # the data fill the plot's height
    assert {c.get("r") for c in svg.iter(f"{SVG}circle")} == {"1.6"}


def test_examples_are_clipped_at_a_word_boundary():
    text = "fetch failed: " + " ".join(f"word{i}" for i in range(60))
    clipped = reports.clip(text, 160)
    assert len(clipped) <= 160 and clipped.endswith("…")
    assert clipped[:-1] == text[: len(clipped) - 1] and text[len(clipped) - 1] == " "
    assert reports.clip("short", 160) == "short"
