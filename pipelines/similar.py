"""Query by poster: the films whose posters look most like a given poster, or a mix of several.

A query is a local or gs:// image file, an http(s) image URL, an IMDb title id (``tt0076759``)
or an IMDb title URL. URLs and IMDb pages are fetched with the scrape stage's fetch code and
politeness rules (host allowlist, robots.txt, per-host rate, retries, user agent), every poster
is validated and normalised like a scraped one, then embedded with the model the index was built
from (the embed stage's ``{version}/model/{version}.keras``, decoded and resized exactly as the
embed stage does) and searched in the ScaNN index. ``--mix`` averages the queries' unit vectors
and returns the films nearest to the mix. Bad input ends with one line on stderr, exit status 2.

    python -m pipelines.similar --vectors=out/vectors --posters=out/demo --query=poster.jpg
    python -m pipelines.similar --vectors=out/vectors --query=tt0076759,tt0080684 --mix
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import sys
import urllib.parse
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from fetching import resolve
from fetching.http import FetchError
from fetching.http import FetchPolicy
from fetching.http import FetchResponse
from fetching.http import PoliteFetcher
from imaging.images import ImageRejected
from imaging.images import normalise_image
from models.lookup import QueryModel
from models.lookup import embed_image_bytes
from models.lookup import index_uri
from models.lookup import load_query_model
from models.lookup import staged_model_uri
from models.lookup import title_with_year
from models.scann_index import PosterIndex
from pipelines.common import Command
from pipelines.common import UsageError
from pipelines.common import main
from pipelines.embed import EmbedOptions
from pipelines.index import IndexOptions
from pipelines.index import resolve_version
from pipelines.neighbors import NeighborsOptions
from pipelines.scrape import ScrapeOptions
from pipelines.scrape import fetch_policy as scrape_fetch_policy
from storage.posters import read_posters

_FETCH_ADVICE = {
    "dns_failure": "check the host name in the URL",
    "connection_refused": "check the host and port in the URL, or try again when the host is up",
    "timeout": "try again later, or raise --connect_timeout_s / --read_timeout_s",
    "connection_error": "try again later",
    "robots_unreachable": "try again when the host answers, or give the poster as an image file",
    "robots_disallowed": "the host's robots.txt forbids it; give another URL or an image file",
}
_IMDB_ID = re.compile(r"tt\d{7,}")
_IMDB_TITLE_PATH = re.compile(r"/title/(tt\d{7,})(?:/.*)?")
_FETCH_FLAGS = (
    "tmdb_api_base", "tmdb_image_base", "imdb_base", "allowed_hosts", "http_user_agent",
    "requests_per_second_per_host", "max_attempts", "backoff_base_s",
    "max_retry_after_s", "connect_timeout_s", "read_timeout_s", "max_body_bytes", "max_pixels",
    "max_side", "min_side", "jpeg_quality",
)  # fmt: skip


class SimilarOptions(PipelineOptions):
    """Options of the query-by-poster tool (the others are the stages' own flags)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("query by poster")
        group.add_argument(
            "--query",
            action="append",
            default=None,
            help="A poster: an image file (local or gs://), an http(s) image URL, an IMDb title "
            "id (tt0076759) or an IMDb title URL. Repeat the flag or separate with commas.",
        )
        group.add_argument("--top_k", type=int, default=10, help="Films listed per query.")
        group.add_argument(
            "--mix",
            action="store_true",
            help="Average the queries' embeddings and list the films nearest to the mix.",
        )


COMMAND = Command(
    "pipelines.similar",
    SimilarOptions,
    __doc__,
    reads=(
        (IndexOptions, ("vectors", "model_version")),
        (NeighborsOptions, ("index",)),
        (EmbedOptions, ("posters", "model", "weights")),
        (ScrapeOptions, _FETCH_FLAGS),
    ),
    required=("--query", "--vectors|--index"),
    hides=("--output", "--num_shards"),
    beam=False,
    overrides={
        "--posters": {"help": "The scrape stage's --output root: titles and years of the films."},
        "--model": {"help": "The embedding model (default: the one the index was built from, "
                    "{vectors}/{version}/model/{version}.keras).", "default": None},
        "--weights": {"help": "Weights for a backbone --model, as for the embed stage."},
    },
)  # fmt: skip


class QueryError(UsageError):
    """A query that cannot be answered; the message is one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class Query:
    """One query as given, and what kind it is: 'file', 'url' or 'imdb'."""

    text: str
    kind: str
    imdb_id: str | None = None
    imdb_base: str | None = None


@dataclasses.dataclass(frozen=True)
class QueryPoster:
    """A query's poster, validated and normalised like a scraped one."""

    query: str
    label: str
    jpeg: bytes


def parse_query(text: str, imdb_base: str) -> Query:
    """Classify a query: IMDb title id or URL, other http(s) URL, or an image file."""
    text = text.strip()
    if _IMDB_ID.fullmatch(text):
        return Query(text, "imdb", imdb_id=text, imdb_base=imdb_base)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme in ("http", "https"):
        title = _IMDB_TITLE_PATH.fullmatch(parts.path)
        if title is not None:
            base = f"{parts.scheme}://{parts.netloc}"
            return Query(text, "imdb", imdb_id=title.group(1), imdb_base=base)
        return Query(text, "url")
    return Query(text, "file")


def split_queries(values: Sequence[str] | None) -> list[str]:
    """The queries of repeated and comma-separated --query values, in order."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def fetch_policy(scrape_options: PipelineOptions) -> FetchPolicy:
    """The scrape stage's fetch policy, from the same flags (allowlist, rate, robots, agent)."""
    return scrape_fetch_policy(scrape_options, pool_size=1)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _normalise(data: bytes, what: str, scrape_options: PipelineOptions) -> bytes:
    """The poster as the scrape stage would store it (RGB JPEG); QueryError if not an image."""
    try:
        return normalise_image(
            data,
            max_pixels=scrape_options.max_pixels,
            max_side=scrape_options.max_side,
            min_side=scrape_options.min_side,
            jpeg_quality=scrape_options.jpeg_quality,
        ).jpeg
    except ImageRejected as exc:
        raise QueryError(
            f"not an image: {what} ({_one_line(exc)}) — give a JPEG or PNG poster"
        ) from None


def _fetch(fetcher: PoliteFetcher, url: str) -> FetchResponse:
    try:
        return fetcher.get(url)
    except FetchError as exc:
        advice = _FETCH_ADVICE.get(exc.reason, "check the URL or --allowed_hosts")
        raise QueryError(
            f"could not fetch {exc.url or url}: {exc.reason}: {_one_line(exc.detail)} — {advice}"
        ) from None


def load_query_poster(
    query: Query, fetcher: PoliteFetcher | None, scrape_options: PipelineOptions
) -> QueryPoster:
    """Read or politely fetch one query's poster and validate it like a scraped one."""
    if query.kind == "file":
        if not FileSystems.exists(query.text):
            raise QueryError(
                f"no such file: {query.text} — give an image file, an http(s) URL or an IMDb "
                "title id such as tt0076759"
            )
        try:
            with FileSystems.open(query.text) as handle:
                data = handle.read()
        except OSError as exc:
            raise QueryError(
                f"cannot read {query.text}: {_one_line(exc)} — give an image file"
            ) from None
        name = os.path.basename(query.text.rstrip("/"))
        return QueryPoster(query.text, name, _normalise(data, query.text, scrape_options))
    url, label = query.text, query.text
    if query.kind == "imdb":
        page_url = resolve.imdb_title_url(query.imdb_base, query.imdb_id)
        page = _fetch(fetcher, page_url).body.decode("utf-8", errors="replace")
        try:
            url = resolve.parse_imdb_title_page(page, page_url=page_url)
        except ValueError as exc:
            raise QueryError(
                f"no poster on {page_url}: {_one_line(exc)} — give an IMDb title id or the "
                "poster's image URL"
            ) from None
        meta = resolve.imdb_metadata(page)
        label = query.imdb_id + (f" {meta.title}" if meta.title else "")
        label = title_with_year(label, meta.year)
    body = _fetch(fetcher, url).body
    return QueryPoster(query.text, label, _normalise(body, url, scrape_options))


def _load_index(uri: str, vectors: str | None) -> PosterIndex:
    try:
        return PosterIndex.load(uri)
    except FileNotFoundError:
        raise QueryError(
            f"no index at {uri} — build it with python -m pipelines.index "
            f"--vectors={vectors or 'VECTORS'} (and --model_version), or pass --index"
        ) from None


def _load_model(model: str, weights: str | None, version: str) -> QueryModel:
    if model.endswith(".keras") and not FileSystems.exists(model):
        raise QueryError(
            f"no model at {model} — run python -m pipelines.embed for {version} first, or "
            "pass the embedding model with --model"
        )
    try:
        return load_query_model(model, weights)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise QueryError(f"cannot load the model {model}: {_one_line(exc)}") from None


def _given(argv: Sequence[str], flag: str) -> bool:
    return any(a == f"--{flag}" or a.startswith(f"--{flag}=") for a in argv)


def open_index_and_model(
    options: PipelineOptions, argv: Sequence[str]
) -> tuple[str, PosterIndex, QueryModel]:
    """The index (--index, else {vectors}/{version}/index) and the model it was built from.

    The model is --model when given, else the embed stage's staged ``.keras`` file; a model
    whose version is not the index's is a QueryError that says how to rebuild.
    """
    vectors = options.view_as(IndexOptions).vectors
    wanted = options.view_as(IndexOptions).model_version
    uri = options.view_as(NeighborsOptions).index
    embed_opts = options.view_as(EmbedOptions)
    if not vectors and not uri:
        raise QueryError("no index — give --vectors (the embed stage's output root) or --index")
    if not uri:
        try:
            uri = index_uri(vectors, resolve_version(vectors, wanted))
        except ValueError as exc:
            raise QueryError(_one_line(exc)) from None
    index = _load_index(uri, vectors)
    version = wanted or index.model_version
    if _given(argv, "model"):
        source = embed_opts.model
    else:
        # The index stage writes {vectors}/{version}/index: its grandparent is the vectors root.
        root = vectors or posixpath.dirname(posixpath.dirname(uri.rstrip("/")))
        source = staged_model_uri(root, version)
    model = _load_model(source, embed_opts.weights, version)
    if model.version != index.model_version:
        raise QueryError(
            f"index {uri} was built for {index.model_version} but the model is {model.version} "
            f"— rebuild with python -m pipelines.index --vectors={vectors or 'VECTORS'} "
            f"--model_version={model.version}, or pass that version's index with --index"
        )
    return uri, index, model


def embed_queries(
    texts: Sequence[str], model: QueryModel, scrape_options: PipelineOptions
) -> tuple[list[QueryPoster], np.ndarray]:
    """Each query's poster (fetched politely where needed) and its unit vector."""
    import tensorflow as tf  # seconds to import: only once there are posters to embed

    queries = [parse_query(t, scrape_options.imdb_base) for t in texts]
    fetcher = None
    if any(q.kind != "file" for q in queries):
        fetcher = PoliteFetcher(fetch_policy(scrape_options))
    try:
        posters = [load_query_poster(q, fetcher, scrape_options) for q in queries]
    finally:
        if fetcher is not None:
            fetcher.close()
    try:
        return posters, embed_image_bytes(model, [p.jpeg for p in posters])
    except tf.errors.OpError as exc:
        raise QueryError(
            f"not an image: {_one_line(exc)[:200]} — give a JPEG or PNG poster"
        ) from None


def _search(options: PipelineOptions, argv: Sequence[str]) -> list[dict]:
    """Load the index and its model, fetch and embed the queries, search; raises QueryError."""
    opts = options.view_as(SimilarOptions)
    texts = split_queries(opts.query)
    if not texts:
        raise QueryError(
            "no query — give --query=poster.jpg, an image URL or an IMDb id such as tt0076759"
        )
    if opts.top_k < 1:
        raise QueryError(f"--top_k={opts.top_k} — give at least 1")
    _, index, model = open_index_and_model(options, argv)
    posters, vectors = embed_queries(texts, model, options.view_as(ScrapeOptions))
    asked = [(p.query, p.label) for p in posters]
    if opts.mix:
        mixed = vectors.mean(axis=0, keepdims=True)
        vectors = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
        asked = [(" + ".join(q for q, _ in asked), "mix of " + " + ".join(la for _, la in asked))]
    posters_root = options.view_as(EmbedOptions).posters
    films = read_posters(posters_root) if posters_root else {}
    found, scores = index.search(vectors, opts.top_k)
    results = []
    for (text, label), ids, sims in zip(asked, found.tolist(), scores.tolist(), strict=True):
        ranked = [(m, s) for m, s in zip(ids, sims, strict=True) if m != -1]
        for rank, (movie_id, score) in enumerate(ranked, start=1):
            record = films.get(movie_id)
            results.append(
                {
                    "query": text,
                    "label": label,
                    "rank": rank,
                    "movie_id": int(movie_id),
                    "title": record.title if record else None,
                    "year": record.year if record else None,
                    "score": float(score),
                    "model_version": index.model_version,
                }
            )
    return results


def format_results(results: Sequence[dict]) -> str:
    """The results as text: a heading per query, then rank, movie id, score, title and year."""
    lines: list[str] = []
    for result in results:
        if result["rank"] == 1:
            if lines:
                lines.append("")
            lines.append(f"query: {result['label']}  (model {result['model_version']})")
            lines.append(f"{'rank':>4}  {'movie_id':>8}  {'score':>7}  title (year)")
        title = title_with_year(result["title"], result["year"]) if result["title"] else "-"
        lines.append(
            f"{result['rank']:>4}  {result['movie_id']:>8}  {result['score']:>7.4f}  {title}"
        )
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> dict:
    """Answer the queries; returns ``results``: one dict per (query, rank) with the query as
    given, its label, rank, movie id, title, year, score and model version.

    A query that cannot be answered raises QueryError (one line that says what to do).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options = COMMAND.parse(argv)
    return {"results": _search(options, argv)}


def results_text(summary: Mapping) -> str:
    """What the command prints: the results of every query."""
    return format_results(summary["results"])


if __name__ == "__main__":
    main(run, show=results_text, quiet=True)
