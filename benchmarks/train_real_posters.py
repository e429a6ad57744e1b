"""The training stage on real posters: trained SqueezeNet embedding vs a frozen-feature probe.

In one run, on this machine, with ``../shared/data`` (or ``$POSTERS_SHARED_DATA``):

* writes the real posters of ``posters/set_a`` and ``posters/set_b`` (one poster per film,
  set_a's when a film is in both) as scrape-stage TFRecords;
* runs ``pipelines.train`` on them: SqueezeNet v1.1 with its ImageNet weights, the six genres
  Action, Comedy, Drama, Horror, Romance, Thriller, the split by a hash of the film id;
* prints the evaluation report of the test split: the trained model, and in the same run the
  baselines, a class-balanced logistic-regression probe on the frozen SqueezeNet ImageNet
  features (``untrained_backbone``) and on raw pixels, with the elapsed wall and CPU time.

Targets: the trained model's micro-F1 beats the probe's and reaches 0.55, and its neighbour
genre Jaccard@10 beats the untrained backbone's by a clear margin; CPU time under 20 minutes.

    python -m benchmarks.train_real_posters [--output DIR] [--max_posters N] [extra train flags]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pathlib
import resource
import tempfile
import time

from imaging.images import normalise_image
from imaging.images import phash_hex
from schemas import PosterRecord
from storage.files import tfrecord_frame
from storage.runs import publish_run

WEIGHTS = "weights/squeezenet_v1.1_imagenet_notop_keras1.h5"
POSTER_SETS = ("set_a", "set_b")
IMDB_ID_OFFSET = 100_000_000
NO_GENRES = "(no genres listed)"
MICRO_F1_TARGET = 0.55
RECIPE = (
    "--genre_set=six",
    "--objective=genres",
    "--warmup_epochs=40",
    "--metric_epochs=8",
    "--unfreeze_blocks=2",
    "--triplet_margin=0.1",
    "--learning_rate=0.001",
    "--fine_tune_learning_rate=0.0001",
    "--batch_size_train=64",
    "--seed=0",
)


def shared_data_dir() -> pathlib.Path:
    """The real-data folder: $POSTERS_SHARED_DATA, default ../shared/data beside the repo."""
    default = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return pathlib.Path(os.environ.get("POSTERS_SHARED_DATA", default))


def film_id(row: dict[str, str]) -> int:
    """The film's id: its MovieLens id, else IMDB_ID_OFFSET + the IMDb number."""
    if row["movieId"]:
        return int(row["movieId"])
    return IMDB_ID_OFFSET + int(row["imdbId"].removeprefix("tt"))


def real_poster_records(data_dir: pathlib.Path, limit: int | None = None) -> list[PosterRecord]:
    """One PosterRecord per film from the real poster sets, sorted by film id."""
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    records: dict[int, PosterRecord] = {}
    for name in POSTER_SETS:
        folder = data_dir / "posters" / name
        with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for line, row in enumerate(rows, start=2):
            movie_id = film_id(row)
            if movie_id in records:
                continue
            image = normalise_image((folder / row["poster_file"]).read_bytes())
            genres = tuple(g for g in row["genres"].split("|") if g and g != NO_GENRES)
            records[movie_id] = PosterRecord(
                movie_id=movie_id, image_jpeg=image.jpeg, width=image.width,
                height=image.height, original_width=image.original_width,
                original_height=image.original_height, original_format=image.original_format,
                content_sha256=image.content_sha256, phash=phash_hex(image.phash),
                source_url=f"file://{name}/{row['poster_file']}", fetched_at=when,
                catalog_line=line, imdb_id=row["imdbId"] or None, title=row["title"] or None,
                genres=genres,
            )  # fmt: skip
    ordered = [records[k] for k in sorted(records)]
    return ordered[:limit] if limit else ordered


def write_poster_tfrecords(records: list[PosterRecord], root: str, shards: int = 4) -> str:
    """Write records as scrape-stage TFRecord shards under ``root``; return ``root``."""
    folder = os.path.join(root, PosterRecord.TABLE, "run-0001")
    os.makedirs(folder, exist_ok=True)
    for shard in range(shards):
        path = os.path.join(folder, f"{PosterRecord.TABLE}-{shard:05d}-of-{shards:05d}.tfrecord")
        with open(path, "wb") as handle:
            handle.write(b"".join(tfrecord_frame(r.to_example()) for r in records[shard::shards]))
    publish_run(root, "run-0001", "benchmark")
    return root


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> None:
    """Write the real posters, train, and print the report with the time taken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="Keep the outputs here (default: temp).")
    parser.add_argument("--max_posters", type=int, default=None)
    args, extra = parser.parse_known_args(argv)
    data_dir = shared_data_dir()
    weights = data_dir / WEIGHTS
    if not weights.exists():
        raise SystemExit(f"real data not found at {data_dir} (set POSTERS_SHARED_DATA)")

    from models.evaluation import format_report_table
    from pipelines import common
    from pipelines import train

    common.configure_logging()
    wall, cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="train_real_posters_") as tmp:
        output = args.output or os.path.join(tmp, "out")
        records = real_poster_records(data_dir, args.max_posters)
        posters = write_poster_tfrecords(records, os.path.join(tmp, "posters"))
        prepared = time.perf_counter() - wall
        report = train.run([
            f"--posters={posters}", f"--output={output}", "--model=squeezenet_v1_1",
            f"--weights={weights}", *RECIPE, *extra,
        ])  # fmt: skip
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    trained = report["models"]["trained"]
    probe = report["models"]["untrained_backbone"]
    print()
    print(format_report_table(report))
    print()
    print(
        f"posters: {len(records)} films (set_a + set_b, one poster per film); "
        f"prepared in {prepared:.0f} s"
    )
    print(f"seconds by step: {json.dumps({k: round(v, 1) for k, v in report['seconds'].items()})}")
    print(f"elapsed: {wall:.0f} s wall, {cpu:.0f} s CPU ({cpu / 60:.1f} CPU minutes)")
    gain = trained["micro_f1_minus"]["untrained_backbone"]
    print(
        f"micro-F1 trained {trained['micro']['f1']:.3f} vs probe {probe['micro']['f1']:.3f}: "
        f"{gain['difference']:+.3f} (paired bootstrap 95% interval {gain['ci95_low']:+.3f} .. "
        f"{gain['ci95_high']:+.3f}); target: beat the probe and reach {MICRO_F1_TARGET}"
    )
    print(
        f"neighbour genre Jaccard@{report['neighbours']}: trained "
        f"{trained['neighbour_genre_jaccard']:.4f} vs untrained backbone "
        f"{probe['neighbour_genre_jaccard']:.4f} vs pixels "
        f"{report['models']['pixels']['neighbour_genre_jaccard']:.4f}"
    )


if __name__ == "__main__":
    main()
