"""Checks of flag values made before any work starts.

Each failure is a :class:`pipelines.common.UsageError` (exit status 2: a flag is missing,
malformed, or names nothing) or :class:`pipelines.common.InputError` (exit status 1: what the flag
names is empty, unreadable or not writable), with a one-line message that names the flag and says
what to do. Nothing here imports TensorFlow, so a bad command line fails in about a second.
"""

from __future__ import annotations

import datetime
import functools
import os
import re

import google.auth
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage as gcs

from pipelines.common import InputError
from pipelines.common import UsageError
from pipelines.common import one_line
from storage import bigquery
from storage.history import history_problem
from storage.runs import published_paths
from transforms.catalog import ACCEPTED_HEADERS
from transforms.catalog import decode_catalog_bytes
from transforms.catalog import detect_format
from transforms.catalog import read_catalog_header
from transforms.warehouse import Warehouse

# Cloud Storage bucket names: 3-222 characters of lower-case letters, digits, '-', '_' and '.'.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048)  # where an HDF5 superblock may start
_MODEL_ADVICE = (
    "give a backbone name (inception_v3, squeezenet_v1_1, small_cnn, pixels, ...) or a .keras "
    "file written by the train or embed stage"
)
_WEIGHTS_ADVICE = (
    "give a local or gs:// .h5, .weights.h5 or .keras file, 'imagenet', or leave --weights unset "
    "for random weights"
)
_CREDENTIALS_ADVICE = (
    "run 'gcloud auth application-default login', or set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file (Dataflow workers use their service account)"
)


def required(flags: dict[str, object], what: str) -> None:
    """UsageError naming every flag of ``flags`` left unset (``what`` says what they are)."""
    missing = [flag for flag, value in flags.items() if not value]
    if missing:
        names = " and ".join(missing) if len(missing) < 3 else ", ".join(missing)
        verb = "is" if len(missing) == 1 else "are"
        raise UsageError(f"{names} {verb} required — {what}")


def run_date(value: str | None, flag: str = "--run_date") -> datetime.date:
    """The date of a YYYY-MM-DD flag; UsageError naming the flag otherwise."""
    try:
        return datetime.date.fromisoformat(value or "")
    except ValueError as exc:
        raise UsageError(
            f"{flag}={value} is not a date ({exc}) — give YYYY-MM-DD, e.g. 2024-05-17"
        ) from None


def writable_output(path: str, flag: str = "--output") -> None:
    """Fail early when an output root cannot be written.

    A local folder is created and a probe file written into it and removed; a gs:// path must
    name a well-formed bucket that exists, with credentials to reach it (write permission is
    known only when the job writes); another scheme must be one Beam's FileSystems knows.
    """
    if "://" in path:
        scheme = path.split("://", 1)[0]
        if scheme == "gs":
            cloud_storage_path(path, flag)
            return
        try:
            FileSystems.get_filesystem(path)
        except ValueError:
            raise UsageError(
                f"{flag}={path}: no file system for {scheme}:// here — give a local folder or "
                "gs://BUCKET/folder"
            ) from None
        return
    why = _unwritable(path)
    if why:
        raise InputError(
            f"{flag}={path} cannot be written ({why}) — choose a folder you can create and "
            "write to"
        )


def _unwritable(folder: str) -> str | None:
    """Why a local folder cannot be created and written to (a probe file), or None."""
    probe = os.path.join(folder, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        return exc.strerror or one_line(exc)
    return None


@functools.cache
def _credentials() -> tuple[object, str | None] | str:
    """(credentials, project) of Application Default Credentials, or why none were found."""
    try:
        return google.auth.default()
    except auth_exceptions.DefaultCredentialsError as exc:
        return one_line(exc)


def gcp_credentials(flag: str, value: str) -> object:
    """The Application Default Credentials a gs:// or bq:// flag needs; InputError without."""
    found = _credentials()
    if isinstance(found, str):
        raise InputError(
            f"{flag}={value} needs Google Cloud credentials and none were found — "
            f"{_CREDENTIALS_ADVICE}"
        )
    return found[0]


@functools.cache
def _bucket_problem(bucket: str, prefix: str) -> str | None:
    """None when the bucket exists and its objects under ``prefix`` can be listed (what
    roles/storage.objectViewer grants; reading the bucket itself needs more); 'missing', or why
    they cannot be listed."""
    client = gcs.Client(project=None, credentials=_credentials()[0])
    try:
        list(client.list_blobs(bucket, prefix=prefix, max_results=1))
    except api_exceptions.NotFound:
        return "missing"
    except (api_exceptions.GoogleAPICallError, auth_exceptions.GoogleAuthError) as exc:
        return f"{type(exc).__name__}: {one_line(exc)[:200]}"
    return None


def cloud_storage_path(path: str, flag: str) -> None:
    """A gs:// flag value: a well-formed bucket name, credentials, and a bucket that exists."""
    bucket, _, name = path[len("gs://") :].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(
            f"{flag}={path}: {bucket!r} is not a Cloud Storage bucket name — give "
            "gs://BUCKET/folder (3-222 lower-case letters, digits, '-', '_' or '.')"
        )
    gcp_credentials(flag, path)
    problem = _bucket_problem(bucket, name.split("*", 1)[0])
    if problem == "missing":
        raise UsageError(
            f"{flag}={path}: bucket gs://{bucket} does not exist — create it (gcloud storage "
            f"buckets create gs://{bucket}) or give a bucket that exists"
        )
    if problem:
        raise InputError(
            f"{flag}={path}: the objects of gs://{bucket} cannot be listed with these "
            f"credentials ({problem}) — grant them roles/storage.objectViewer on it (and "
            "roles/storage.objectAdmin where the job writes), or use other credentials"
        )


def warehouse(uri: str | None, output: str, remote: bool = True) -> Warehouse:
    """The --warehouse (default {output}/warehouse.duckdb): a local DuckDB file, or a BigQuery
    dataset that exists, with credentials to reach it (``remote=False``, for a --dry_run that
    only translates the pipeline: the form alone)."""
    default = uri is None
    try:
        found = Warehouse.parse(
            uri or "duckdb://" + FileSystems.join(output, "warehouse.duckdb"),
            staging_root=FileSystems.join(output, "bigquery"),
        )
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    if found.kind == "duckdb" and "://" in found.target:
        what = f"its default {found.target}" if default else found.target
        raise UsageError(
            f"--warehouse{'' if default else '=' + uri}: {what} is not a local file, and a "
            "DuckDB warehouse must be one — give --warehouse=bq://PROJECT.DATASET or "
            "--warehouse=duckdb:///local/path/warehouse.duckdb"
        )
    if found.kind == "duckdb":
        _local_warehouse(found, f"--warehouse={uri}" if uri else
                         f"--warehouse (its default {found.target}, under --output)")
    if found.kind == "bq" and remote:
        project, dataset = found.project_dataset
        credentials = gcp_credentials("--warehouse", uri)
        try:
            client = bigquery.client(project, credentials)
            exists = bigquery.dataset_exists(client, project, dataset)
        except (api_exceptions.GoogleAPICallError, auth_exceptions.GoogleAuthError) as exc:
            raise InputError(
                f"--warehouse={uri}: dataset {project}.{dataset} cannot be read with these "
                f"credentials ({type(exc).__name__}: {one_line(exc)[:200]}) — grant them "
                "roles/bigquery.dataEditor on it and roles/bigquery.jobUser on the project"
            ) from None
        if not exists:
            raise UsageError(
                f"--warehouse={uri}: dataset {project}.{dataset} does not exist — create it "
                f"(bq mk --dataset {project}:{dataset}) or give another with "
                "--warehouse=bq://PROJECT.DATASET"
            )
    return found


def _local_warehouse(found: Warehouse, flag: str) -> None:
    """A DuckDB warehouse's folders can be written and its file, when there is one, opened as a
    DuckDB database for writing: checked before any work, not at the publish after it."""
    for folder in (os.path.dirname(os.path.abspath(found.target)), found.parquet_root):
        why = _unwritable(folder)
        if why:
            raise InputError(
                f"{flag}: {folder} cannot be written ({why}) — give a warehouse file in a "
                "folder you can write to"
            )
    if os.path.exists(found.target):
        import duckdb  # only a local warehouse needs it

        try:
            duckdb.connect(found.target).close()
        except (duckdb.Error, OSError) as exc:
            raise InputError(
                f"{flag}: {found.target} cannot be opened as a DuckDB database for writing "
                f"({one_line(exc)[:200]}) — give another --warehouse file, or move this one away"
            ) from None


def _head(path: str, size: int) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read(size)


def existing_file(path: str, flag: str, advice: str) -> None:
    """UsageError when ``path`` names no file (local or gs://)."""
    if path.startswith("gs://"):
        cloud_storage_path(path, flag)
    if not FileSystems.exists(path) or ("://" not in path and os.path.isdir(path)):
        raise UsageError(f"{flag}={path}: no such file — {advice}")


def keras_file(path: str, flag: str, advice: str) -> None:
    """The file exists and is a Keras v3 ``.keras`` archive (a zip file)."""
    existing_file(path, flag, advice)
    if _head(path, len(_ZIP_MAGIC)) != _ZIP_MAGIC:
        raise InputError(
            f"{flag}={path} is not a Keras model file (a .keras file is a zip archive) — {advice}"
        )


def hdf5_file(path: str, flag: str, advice: str) -> None:
    """The file exists and is an HDF5 file (Keras .h5 and .weights.h5 weights)."""
    existing_file(path, flag, advice)
    head = _head(path, _HDF5_OFFSETS[-1] + len(_HDF5_MAGIC))
    if not any(head[o : o + len(_HDF5_MAGIC)] == _HDF5_MAGIC for o in _HDF5_OFFSETS):
        raise InputError(f"{flag}={path} is not an HDF5 weights file — {advice}")


def model_flags(model: str | None, weights: str | None) -> None:
    """--model and --weights: a .keras model file readable and alone, a weights file readable.

    Backbone names are checked against the model registry when the model is built.
    """
    if model and model.endswith(".keras"):
        keras_file(model, "--model", _MODEL_ADVICE)
        if weights is not None:
            raise UsageError(
                f"--model={model} is a saved model with its own weights — leave --weights unset"
            )
    if not weights or weights in ("imagenet", "random"):
        return
    if weights.endswith(".keras"):
        keras_file(weights, "--weights", _WEIGHTS_ADVICE)
    elif weights.endswith((".h5", ".hdf5")):
        hdf5_file(weights, "--weights", _WEIGHTS_ADVICE)
    else:
        raise UsageError(f"--weights={weights} is not understood — {_WEIGHTS_ADVICE}")


def model_load_error(model: str, weights: str | None, exc: Exception) -> UsageError | InputError:
    """The one-line error of a --model (or its --weights) that the registry cannot load."""
    if str(exc).startswith("unknown model"):
        return UsageError(f"--model={model}: {one_line(exc)}")
    if weights and weights != "random" and not model.endswith(".keras"):
        flag, value, advice = "--weights", weights, _WEIGHTS_ADVICE
    else:
        flag, value, advice = "--model", model, _MODEL_ADVICE
    return InputError(f"{flag}={value} cannot be loaded ({one_line(exc)[:300]}) — {advice}")


def catalog_file(path: str, catalog_format: str | None) -> None:
    """The catalog exists, holds a header and at least one film, and its header is known."""
    existing_file(
        path,
        "--catalog",
        "give a catalog CSV (local or gs://), or --synthetic_films=N for the built-in demo",
    )
    with FileSystems.open(path) as handle:  # compression from the name, as the stage reads it
        head = handle.read(1 << 16)
    lines = [line for line in decode_catalog_bytes(head).splitlines() if line.strip()]
    if not lines:
        raise InputError(
            f"--catalog={path} is empty — give a CSV with a header row and one film per row "
            f"({ACCEPTED_HEADERS})"
        )
    if len(lines) < 2:
        raise InputError(f"--catalog={path} has a header but no films — add one film per row")
    if catalog_format is None:
        try:
            detect_format(read_catalog_header(path))
        except ValueError as exc:
            raise InputError(f"--catalog={path}: {one_line(exc)}") from None


def matching_files(pattern: str, flag: str, value: str, advice: str) -> None:
    """UsageError when a glob derived from a flag matches no file; InputError when every file
    it matches belongs to an unpublished run (one killed or still running)."""
    if pattern.startswith("gs://"):
        cloud_storage_path(value if value.startswith("gs://") else pattern, flag)
    found = [m for r in FileSystems.match([pattern]) for m in r.metadata_list]
    if not found:
        raise UsageError(f"{flag}={value}: nothing matches {pattern} — {advice}")
    if not published_paths(pattern):
        raise InputError(
            f"{flag}={value}: the {len(found)} files matching {pattern} belong to runs with no "
            "manifest (killed or still running) — rerun the stage that writes them"
        )


def watch_history(uri: str | None) -> None:
    """--watch_history, when given, names a file (a bq:// table is checked when it is read,
    after its credentials here)."""
    if uri and uri.startswith("bq://"):
        gcp_credentials("--watch_history", uri)
    elif uri:
        existing_file(
            uri,
            "--watch_history",
            "give MovieLens ratings (userId,movieId,rating,timestamp) as CSV or Parquet, or "
            "bq://PROJECT.DATASET.TABLE",
        )
        problem = history_problem(uri)
        if problem:
            raise InputError(
                f"--watch_history={uri} {problem}: nothing was run and the published "
                "candidates are unchanged — give MovieLens ratings, and check the export that "
                "writes them"
            )
