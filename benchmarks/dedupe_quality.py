"""Dedupe quality on real posters: near-duplicate recall and false merges of the dedupe plan.

With ``../shared/data`` (or ``$POSTERS_SHARED_DATA``): every poster of ``posters/set_a`` and
``posters/set_b`` plus the ten of ``posters/near_pairs``, each normalised by
:func:`imaging.images.normalise_image`, then deduplicated by the project's own plan
(:func:`transforms.dedupe.plan_hash_candidates`, each candidate pair scored by
:func:`imaging.image_match.confirmation_score`, then
:func:`transforms.dedupe.plan_image_duplicates`). A film is its IMDb id; the near pair that
``pairs.csv`` marks ``same_film`` (two MovieLens ids of one film) counts as one film.

* **originals only**: the candidate pairs the hash finds among all n (n - 1) / 2 pairs, the merges
  the plan confirms, and the false merges (a dropped poster whose canonical is another film),
  beside what a hash-only rule at 8 bits (every candidate within 8 bits merged) would have done.
* **per copy transform** (:data:`synthetic.posters.COPY_TRANSFORMS`): an edited copy of every
  original joins the originals in one run; a copy is recalled when the plan drops it in favour of
  a poster of its own film. Printed beside the hash-only recall (copies within the threshold of
  their original), with the false merges of that run.

The last line is ``RESULT recall_all=X false_merges=N pairs=N``: the recall over the copies of all
transforms, the false merges summed over the originals-only run and every transform run, and the
number of pairs of originals. Without the shared data it says so and exits 0.

    python -m benchmarks.dedupe_quality [--threshold 14] [--min_confirmation 0.92] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import multiprocessing
import os
import pathlib
import sys
import time
from collections.abc import Sequence

from imaging.image_match import DEFAULT_MIN_CONFIRMATION
from imaging.image_match import confirmation_score
from imaging.images import ImageRejected
from imaging.images import normalise_image
from imaging.phash_index import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from synthetic.posters import COPY_TRANSFORMS
from synthetic.posters import edited_copy
from transforms.dedupe import EXACT
from transforms.dedupe import Decision
from transforms.dedupe import HashPlan
from transforms.dedupe import ImageKey
from transforms.dedupe import plan_hash_candidates
from transforms.dedupe import plan_image_duplicates

DATA_ENV = "POSTERS_SHARED_DATA"
POSTER_SETS = ("set_a", "set_b")
NEAR_PAIRS = "near_pairs"
HASH_ONLY_BITS = 8
MAX_LISTED = 25
WORKERS = 2


def shared_data_dir() -> pathlib.Path:
    """The real-data folder: $POSTERS_SHARED_DATA, default ../shared/data beside the repo."""
    root = pathlib.Path(__file__).resolve().parent.parent
    return pathlib.Path(os.environ.get(DATA_ENV, root.parent / "shared" / "data"))


@dataclasses.dataclass(frozen=True)
class Item:
    """One poster file and the film it shows."""

    label: str
    film: str
    title: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the plan and the confirmation need of one normalised poster."""

    content_sha256: str
    phash: int
    pixels: int
    signature: bytes


# ---------------------------------------------------------------------------- data
def _imdb_of_movie(links: pathlib.Path) -> dict[int, str]:
    with open(links, newline="", encoding="utf-8") as handle:
        return {int(r["movieId"]): "tt" + r["imdbId"].zfill(7) for r in csv.DictReader(handle)}


def load_items(data: pathlib.Path, limit: int) -> tuple[list[Item], dict[str, str]]:
    """Set posters (up to ``limit``, 0 = all), then the near pairs; and film aliases."""
    posters = data / "posters"
    items: list[Item] = []
    for name in POSTER_SETS:
        folder = posters / name
        with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if limit and len(items) >= limit:
                    break
                data_bytes = (folder / row["poster_file"]).read_bytes()
                label = f"{name}/{row['poster_file']}"
                items.append(Item(label, row["imdbId"], row["title"], data_bytes))
    imdb = _imdb_of_movie(data / "movielens" / "ml-latest-small" / "links.csv")
    aliases: dict[str, str] = {}
    near = posters / NEAR_PAIRS
    with open(near / "pairs.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            film_a, film_b = imdb[int(row["movieId_a"])], imdb[int(row["movieId_b"])]
            for side, film in (("a", film_a), ("b", film_b)):
                data_bytes = (near / row[f"poster_{side}"]).read_bytes()
                label = f"{NEAR_PAIRS}/{row[f'poster_{side}']}"
                items.append(Item(label, film, row[f"title_{side}"], data_bytes))
            if row["same_film"].strip().lower() == "true":
                aliases[film_b] = film_a
    return items, aliases


def _film(film: str, aliases: dict[str, str]) -> str:
    while film in aliases:
        film = aliases[film]
    return film


# ---------------------------------------------------------------------------- preparation
def _prepare(job: tuple[bytes, str | None]) -> Prepared | str:
    """Normalised poster facts of the bytes (after the copy transform, if any), or why not."""
    data, transform = job
    try:
        if transform is not None:
            data = edited_copy(data, transform)
        image = normalise_image(data)
    except ImageRejected as exc:
        return exc.reason
    return Prepared(
        image.content_sha256,
        image.phash,
        image.original_width * image.original_height,
        image.signature,  # as the scrape stage has it: from the pixels, when fetched
    )


def prepare_all(pool, items: Sequence[Item], transform: str | None) -> list[Prepared | str]:
    """:func:`_prepare` of every item, in item order."""
    jobs = [(item.data, transform) for item in items]
    return list(pool.imap(_prepare, jobs, chunksize=32))


# ---------------------------------------------------------------------------- one plan run
@dataclasses.dataclass
class RunResult:
    """One run of the plan: its pairs, scores, decisions and time."""

    plan: HashPlan
    prepared: dict[int, Prepared]
    scores: dict[tuple[int, int], float]
    decisions: dict[int, Decision]
    seconds: float


def run_plan(prepared: dict[int, Prepared], threshold: int, min_confirmation: float) -> RunResult:
    """The project's dedupe plan on the posters (id -> facts; the id is also the line)."""
    started = time.perf_counter()
    keys = [
        ImageKey(
            movie_id=i,
            line_number=i,
            content_sha256=p.content_sha256,
            phash=p.phash,
            pixels=p.pixels,
            existing=False,
        )
        for i, p in prepared.items()
    ]
    plan = plan_hash_candidates(keys, threshold)
    scored = [
        (a, b, d, confirmation_score(prepared[a].signature, prepared[b].signature))
        for a, b, d in plan.pairs
    ]
    decisions = plan_image_duplicates(plan, scored, min_confirmation)
    scores = {(a, b): s for a, b, _, s in scored}
    return RunResult(plan, prepared, scores, decisions, time.perf_counter() - started)


def hash_only_decisions(prepared: dict[int, Prepared], bits: int) -> dict[int, Decision]:
    """What a hash-only rule would merge: every candidate pair within ``bits`` confirmed."""
    keys = [ImageKey(i, i, p.content_sha256, p.phash, p.pixels, False) for i, p in prepared.items()]
    plan = plan_hash_candidates(keys, bits)
    return plan_image_duplicates(plan, [(a, b, d, 1.0) for a, b, d in plan.pairs], 1.0)


def _distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _pair_score(run: RunResult, a: int, b: int) -> float | None:
    return run.scores.get((a, b), run.scores.get((b, a)))


# ---------------------------------------------------------------------------- report
class Report:
    """Films and titles of the ids of a run, and the formatting of merges."""

    def __init__(self, items: Sequence[Item], aliases: dict[str, str]) -> None:
        self.items = items
        self.n = len(items)
        self.films = [_film(item.film, aliases) for item in items]

    def original(self, movie_id: int) -> int:
        return movie_id % self.n

    def film(self, movie_id: int) -> str:
        return self.films[self.original(movie_id)]

    def name(self, movie_id: int) -> str:
        item = self.items[self.original(movie_id)]
        copy = " (copy)" if movie_id >= self.n else ""
        return f"{item.title} [{item.film}, {item.label}]{copy}"

    def false_merges(self, decisions: dict[int, Decision]) -> list[tuple[int, Decision]]:
        return sorted(
            (dropped, d)
            for dropped, d in decisions.items()
            if self.film(dropped) != self.film(d.canonical_movie_id)
        )

    def describe(self, dropped: int, decision: Decision) -> str:
        score = "-" if decision.confirmation is None else f"{decision.confirmation:.4f}"
        return (
            f"    {decision.kind}: {self.name(dropped)} -> {self.name(decision.canonical_movie_id)}"
            f"  distance={decision.distance} score={score}"
        )


def _print_false_merges(report: Report, merges: list[tuple[int, Decision]]) -> None:
    for dropped, decision in merges[:MAX_LISTED]:
        print(report.describe(dropped, decision))
    if len(merges) > MAX_LISTED:
        print(f"    ... and {len(merges) - MAX_LISTED} more")


def originals_run(
    report: Report, prepared: dict[int, Prepared], threshold: int, min_confirmation: float
) -> int:
    """The plan on the originals alone, beside the hash-only rule; returns its false merges."""
    run = run_plan(prepared, threshold, min_confirmation)
    n = len(prepared)
    false = report.false_merges(run.decisions)
    false_ids = {m for m, _ in false}
    same = [(m, d) for m, d in run.decisions.items() if m not in false_ids]
    same_exact = sum(1 for _, d in same if d.kind == EXACT)
    confirmed = sum(1 for s in run.scores.values() if s >= min_confirmation)
    print(f"originals only: {n:,} posters, {n * (n - 1) // 2:,} pairs")
    print(
        f"  plan (hash <= {threshold} bits, score >= {min_confirmation}): "
        f"{len(run.plan.pairs):,} candidate pairs, {confirmed:,} confirmed, "
        f"{len(run.decisions):,} merges ({len(run.plan.exact):,} exact), "
        f"same-film merges {len(same):,} ({same_exact:,} exact, {len(same) - same_exact:,} near), "
        f"false merges {len(false):,}, {run.seconds:.2f} s"
    )
    _print_false_merges(report, false)
    for dropped, decision in sorted(same):
        canonical = decision.canonical_movie_id
        if report.items[dropped].film != report.items[canonical].film:
            print("  same film, two ids:" + report.describe(dropped, decision)[3:])
    same_pairs = [s for (a, b), s in run.scores.items() if report.film(a) == report.film(b)]
    other_pairs = [s for (a, b), s in run.scores.items() if report.film(a) != report.film(b)]
    confirmed_scores = [s for s in run.scores.values() if s >= min_confirmation]
    print(
        f"  candidate pairs: {len(same_pairs):,} of one film, {len(other_pairs):,} of different"
        f" films; best different-film score {max(other_pairs, default=float('nan')):.4f},"
        f" lowest confirmed score {min(confirmed_scores, default=float('nan')):.4f}"
    )
    best_rejected = sorted(
        ((s, a, b) for (a, b), s in run.scores.items() if s < min_confirmation), reverse=True
    )
    for s, a, b in best_rejected[:3]:
        print(
            f"  rejected candidate: score={s:.4f} {report.name(a)} / {report.name(b)}"
            f" (distance {_distance(prepared[a].phash, prepared[b].phash)})"
        )
    hash_only = hash_only_decisions(prepared, HASH_ONLY_BITS)
    hash_false = report.false_merges(hash_only)
    print(
        f"  hash-only rule at {HASH_ONLY_BITS} bits (old behaviour): {len(hash_only):,} merges, "
        f"false merges {len(hash_false):,}"
    )
    _print_false_merges(report, hash_false)
    return len(false)


def _why_missed(report: Report, run: RunResult, copy_id: int) -> str:
    """Why a copy was not dropped in favour of its own film, with the evidence."""
    decision = run.decisions.get(copy_id)
    if decision is not None:
        return "dropped into another film:" + report.describe(copy_id, decision)[3:]
    original_id = report.original(copy_id)
    if original_id not in run.prepared:
        return "original rejected"
    copy, original = run.prepared[copy_id], run.prepared[original_id]
    score = _pair_score(run, original_id, copy_id)
    where = "candidate"
    if score is None:
        score = confirmation_score(original.signature, copy.signature)
        where = "not a candidate"
    why = (
        f"kept ({where} of its original): distance={_distance(copy.phash, original.phash)}"
        f" score={score:.4f}"
    )
    original_decision = run.decisions.get(original_id)
    if original_decision is not None:
        canonical_id = original_decision.canonical_movie_id
        canonical = run.prepared[canonical_id]
        to_canonical = _pair_score(run, canonical_id, copy_id)
        if to_canonical is None:
            to_canonical = confirmation_score(canonical.signature, copy.signature)
        why += (
            f"; its original was dropped ({original_decision.kind}, score"
            f" {original_decision.confirmation}) into {report.name(canonical_id)}, which the copy"
            f" is {_distance(copy.phash, canonical.phash)} bits from, score {to_canonical:.4f}"
        )
    led = sorted(m for m, d in run.decisions.items() if d.canonical_movie_id == copy_id)
    if led:
        why += f"; the copy is the canonical of {', '.join(report.name(m) for m in led)}"
    return why


def transform_run(
    report: Report,
    originals: dict[int, Prepared],
    copies: dict[int, Prepared],
    transform: str,
    threshold: int,
    min_confirmation: float,
    prepare_seconds: float,
) -> tuple[int, int, int, dict]:
    """Originals plus one transform's copies in one run: (copies, recalled, false merges, row)."""
    n = report.n
    run = run_plan({**originals, **copies}, threshold, min_confirmation)
    recalled, missed = 0, []
    within, within_old = 0, 0
    for copy_id, copy in copies.items():
        original = originals.get(copy_id - n)
        distance = None if original is None else _distance(copy.phash, original.phash)
        within += distance is not None and distance <= threshold
        within_old += distance is not None and distance <= HASH_ONLY_BITS
        decision = run.decisions.get(copy_id)
        if decision is not None and report.film(decision.canonical_movie_id) == report.film(
            copy_id
        ):
            recalled += 1
        else:
            missed.append(copy_id)
    false = report.false_merges(run.decisions)
    total = len(copies)
    row = {
        "transform": transform,
        "copies": total,
        "recalled": recalled,
        "recall": recalled / total if total else 0.0,
        "hash_recall": within / total if total else 0.0,
        "hash8_recall": within_old / total if total else 0.0,
        "false": len(false),
        "pairs": len(run.plan.pairs),
        "seconds": run.seconds,
        "prepare_seconds": prepare_seconds,
    }
    print(
        f"  {transform:<9} {total:>6,} {recalled:>8,} {row['recall']:>7.4f}"
        f" {row['hash_recall']:>9.4f} {row['hash8_recall']:>8.4f} {len(false):>6,}"
        f" {len(run.plan.pairs):>10,} {run.seconds:>7.2f} {prepare_seconds:>8.2f}"
    )
    for copy_id in missed[:MAX_LISTED]:
        print(
            f"    missed {transform}: {report.name(copy_id)}: {_why_missed(report, run, copy_id)}"
        )
    if len(missed) > MAX_LISTED:
        print(f"    ... and {len(missed) - MAX_LISTED} more missed")
    _print_false_merges(report, false)
    return total, recalled, len(false), row


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run the benchmark, print its figures and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=int, default=DEFAULT_NEAR_DUPLICATE_THRESHOLD)
    parser.add_argument("--min_confirmation", type=float, default=DEFAULT_MIN_CONFIRMATION)
    parser.add_argument("--limit", type=int, default=0, help="set posters to use; 0 = all")
    args = parser.parse_args(argv)

    data = shared_data_dir()
    needed = [data / "posters" / s / "index.csv" for s in POSTER_SETS] + [
        data / "posters" / NEAR_PAIRS / "pairs.csv",
        data / "movielens" / "ml-latest-small" / "links.csv",
    ]
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        print(
            f"dedupe_quality: skipped: the shared real data is not there ({', '.join(absent)} "
            f"missing); set {DATA_ENV} to the shared data folder to run it"
        )
        return 0

    started = time.perf_counter()
    items, aliases = load_items(data, args.limit)
    report = Report(items, aliases)
    n = report.n
    print(
        f"dedupe quality on real posters from {data}: {n:,} posters "
        f"(set_a, set_b{', limited' if args.limit else ''}, near_pairs), "
        f"{len(set(report.films)):,} films"
    )
    print(f"threshold={args.threshold} bits, min_confirmation={args.min_confirmation}")

    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        t0 = time.perf_counter()
        facts = prepare_all(pool, items, None)
        originals = {i: p for i, p in enumerate(facts) if isinstance(p, Prepared)}
        rejected = n - len(originals)
        print(
            f"normalised {len(originals):,} originals in {time.perf_counter() - t0:.1f} s"
            f" ({rejected} rejected)"
        )
        false_total = originals_run(report, originals, args.threshold, args.min_confirmation)

        print(
            f"copies (plan on originals + copies; hash recall = copies within "
            f"{args.threshold} bits of their original, hash8 = within {HASH_ONLY_BITS}):"
        )
        print(
            f"  {'transform':<9} {'copies':>6} {'recalled':>8} {'recall':>7} {'hash rec':>9}"
            f" {'hash8':>8} {'false':>6} {'cand pairs':>10} {'plan s':>7} {'prep s':>8}"
        )
        copies_all, recalled_all = 0, 0
        for transform in COPY_TRANSFORMS:
            t0 = time.perf_counter()
            copy_facts = prepare_all(pool, items, transform)
            copies = {
                n + i: p
                for i, p in enumerate(copy_facts)
                if isinstance(p, Prepared) and i in originals
            }
            copies_n, recalled, false, _ = transform_run(
                report,
                originals,
                copies,
                transform,
                args.threshold,
                args.min_confirmation,
                time.perf_counter() - t0,
            )
            copies_all += copies_n
            recalled_all += recalled
            false_total += false

    recall_all = recalled_all / copies_all if copies_all else 0.0
    pairs = len(originals) * (len(originals) - 1) // 2
    print(
        f"all transforms: {recalled_all:,} of {copies_all:,} copies recalled; "
        f"{time.perf_counter() - started:.1f} s in all"
    )
    print(f"RESULT recall_all={recall_all:.4f} false_merges={false_total} pairs={pairs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
