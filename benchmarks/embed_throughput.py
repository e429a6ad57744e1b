"""Embed throughput: images/s of the embed pipeline beside a bare loop of batched predict.

In one run, on this machine, with the same model and the same posters:

* baseline: the model's ``predict_on_batch`` over pre-decoded, pre-resized image batches;
* the embed pipeline end to end (read TFRecords, decode, resize, RunInference, write Parquet),
  timed from ``pipelines.embed.run`` start to finish, model build and load included.

Target: pipeline / bare loop >= 0.9. Uses a GPU when TensorFlow sees one.

    python -m benchmarks.embed_throughput [--model inception_v3] [--images 2048] [--batch 32]
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time

import numpy as np

from imaging.images import normalise_image
from imaging.images import phash_hex
from models.registry import load_embedding_model
from pipelines import embed
from schemas import PosterRecord
from storage.files import tfrecord_frame
from storage.runs import publish_run
from synthetic.catalog import make_catalog
from transforms.embed import prepare_image


def write_posters(folder: str, n: int) -> list[bytes]:
    """Write n synthetic posters as scrape-stage TFRecords; return their JPEG bytes."""
    catalog = make_catalog(n, seed=7, exact_duplicate_fraction=0, near_duplicate_fraction=0)
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    jpegs, frames = [], []
    for film in catalog.films:
        image = normalise_image(catalog.poster_bytes(film.movie_id))
        record = PosterRecord(
            movie_id=film.movie_id, image_jpeg=image.jpeg, width=image.width,
            height=image.height, original_width=image.original_width,
            original_height=image.original_height, original_format=image.original_format,
            content_sha256=image.content_sha256, phash=phash_hex(image.phash),
            source_url="synthetic", fetched_at=when, catalog_line=film.movie_id,
        )  # fmt: skip
        jpegs.append(image.jpeg)
        frames.append(tfrecord_frame(record.to_example()))
    shard = os.path.join(folder, "posters", "run-0001")
    os.makedirs(shard)
    with open(os.path.join(shard, "posters-00000-of-00001.tfrecord"), "wb") as handle:
        handle.write(b"".join(frames))
    publish_run(folder, "run-0001", "benchmark")
    return jpegs


def bare_loop(model, images: np.ndarray, batch: int) -> float:
    """Seconds for predict_on_batch over all images in fixed batches (after one warm-up)."""
    model.predict_on_batch(images[:batch])
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        model.predict_on_batch(images[i : i + batch])
    return time.perf_counter() - start


def main(argv=None) -> None:
    """Run both measurements and print them with their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--weights", default=None, help="Random weights when omitted.")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    args, beam_args = parser.parse_known_args(argv)

    import tensorflow as tf

    devices = [d.name for d in tf.config.list_physical_devices("GPU")] or ["CPU"]
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = write_posters(tmp, args.images)
        em = load_embedding_model(args.model, args.weights)
        decoded = np.stack([prepare_image(j, em.input_size) for j in jpegs])
        bare_s = bare_loop(em.keras_model, decoded, args.batch)
        start = time.perf_counter()
        manifest = embed.run([
            f"--posters={tmp}", f"--output={os.path.join(tmp, 'vectors')}",
            f"--model={args.model}", *([f"--weights={args.weights}"] if args.weights else []),
            f"--min_batch_size={args.batch}", f"--max_batch_size={args.batch}", *beam_args,
        ])  # fmt: skip
        pipe_s = time.perf_counter() - start
    n = args.images
    print(f"embed throughput: {args.model} ({em.version}), {n} posters, batch {args.batch}, "
          f"devices {devices}, {os.cpu_count()} CPU cores")  # fmt: skip
    print(f"  bare predict_on_batch loop (baseline): {n / bare_s:8.1f} images/s ({bare_s:.1f} s)")
    print(f"  embed pipeline end to end:             {n / pipe_s:8.1f} images/s ({pipe_s:.1f} s, "
          "model build and load included)")  # fmt: skip
    ratio = bare_s / pipe_s
    verdict = "MET" if ratio >= 0.9 else "NOT MET"
    print(f"  pipeline / bare loop: {ratio:.2f} (target >= 0.90: {verdict})")
    print(f"  manifest: {manifest['identity']}")


if __name__ == "__main__":
    main()
