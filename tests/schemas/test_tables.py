"""The three physical forms of every table agree, and rows round-trip unchanged."""

from __future__ import annotations

import datetime
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from schemas import ALL_TABLES
from schemas import CandidateRow
from schemas import CatalogEntry
from schemas import DeadLetter
from schemas import DuplicateRecord
from schemas import EmbeddingRow
from schemas import Kind
from schemas import NeighborRow
from schemas import PosterRecord
from schemas import RunManifest
from schemas import WatchEvent

UTC = datetime.UTC
WHEN = datetime.datetime(2024, 5, 17, 3, 4, 5, 123456, tzinfo=UTC)

SAMPLES = {
    CatalogEntry: CatalogEntry(
        line_number=3,
        movie_id=260,
        imdb_id="tt0076759",
        tmdb_id=11,
        title="Star Wars",
        year=1977,
        poster_url="https://image.tmdb.org/t/p/w500/x.jpg",
        genres=("Action", "Sci-Fi"),
    ),
    PosterRecord: PosterRecord(
        movie_id=260,
        image_jpeg=b"\xff\xd8\x00jpeg\xff\xd9",
        width=182,
        height=268,
        original_width=364,
        original_height=536,
        original_format="JPEG",
        content_sha256="ab" * 32,
        phash="f0e1d2c3b4a59687",
        source_url="http://x/y.jpg",
        fetched_at=WHEN,
        catalog_line=3,
        imdb_id="tt0076759",
        tmdb_id=None,
        title="Star Wars",
        year=1977,
        genres=("Action", "Adventure", "Sci-Fi"),
    ),
    EmbeddingRow: EmbeddingRow(
        movie_id=1,
        dim=4,
        model_name="small_cnn",
        model_version="v1-abc",
        content_sha256="cd" * 32,
        poster_of=1,
        embedded_at=WHEN,
        embedding=(0.5, -0.5, 0.25, 0.125),
    ),
    NeighborRow: NeighborRow(
        movie_id=1,
        rank=1,
        neighbor_id=2,
        score=0.875,
        source="cowatch+poster",
        model_version="v1",
        run_date=datetime.date(2024, 5, 17),
    ),
    CandidateRow: CandidateRow(
        user_id=7,
        rank=1,
        movie_id=3,
        score=1.5,
        model_version="v1",
        run_date=datetime.date(2024, 5, 17),
        contributing_movie_ids=(1, 2),
    ),
    WatchEvent: WatchEvent(user_id=7, movie_id=1, rating=4.5, watched_at=WHEN),
    DeadLetter: DeadLetter(
        run_id="run-0001",
        stage="fetch",
        reason="http_500",
        detail="gave up",
        input_row="{}",
        attempts=4,
        line_number=9,
        movie_id=None,
        url="http://x",
        http_status=500,
    ),
    DuplicateRecord: DuplicateRecord(
        run_id="run-0001",
        movie_id=5,
        canonical_movie_id=4,
        kind="near",
        distance=3,
        line_number=6,
        content_sha256="ef" * 32,
        canonical_content_sha256=None,
        source_url=None,
    ),
    RunManifest: RunManifest(
        run_id="run-0001",
        stage="scrape",
        started_at=WHEN,
        finished_at=WHEN,
        input_path="c.csv",
        output_path="out",
        input_rows=10,
        written=7,
        duplicates=2,
        dead_lettered=1,
        already_present=0,
        accounting_ok=True,
        counts_json="{}",
        options_json="{}",
    ),
}

ARROW_TYPES = {
    Kind.INT64: pa.int64(),
    Kind.FLOAT32: pa.float32(),
    Kind.FLOAT64: pa.float64(),
    Kind.BOOL: pa.bool_(),
    Kind.STRING: pa.string(),
    Kind.BYTES: pa.binary(),
    Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Kind.DATE: pa.date32(),
}


def test_every_table_has_a_sample():
    assert set(SAMPLES) == set(ALL_TABLES)


@pytest.mark.parametrize("table", ALL_TABLES, ids=lambda t: t.TABLE)
def test_three_forms_agree(table):
    names = table.column_names()
    arrow = table.arrow_schema()
    bigquery = table.bigquery_schema()["fields"]
    spec = table.feature_spec()
    assert arrow.names == names
    assert [f["name"] for f in bigquery] == names
    assert sorted(spec) == sorted(names)
    for (name, column), field, bq in zip(table.columns(), arrow, bigquery, strict=True):
        expected = ARROW_TYPES[column.kind]
        if column.repeated:
            assert bq["mode"] == "REPEATED"
            assert field.type == pa.list_(expected)
            assert isinstance(spec[name], tf.io.VarLenFeature)
        elif column.nullable:
            assert bq["mode"] == "NULLABLE" and field.nullable
            assert field.type == expected
            assert isinstance(spec[name], tf.io.VarLenFeature)
        else:
            assert bq["mode"] == "REQUIRED" and not field.nullable
            assert field.type == expected
            assert isinstance(spec[name], tf.io.FixedLenFeature)
        assert bq["description"] == column.description


@pytest.mark.parametrize("table", ALL_TABLES, ids=lambda t: t.TABLE)
def test_tfrecord_round_trip(table):
    row = SAMPLES[table]
    serialized = row.to_example()
    assert table.from_example(serialized) == row
    parsed = tf.io.parse_single_example(serialized, table.feature_spec())
    for name, column in table.columns():
        value = getattr(row, name)
        got = parsed[name]
        if isinstance(got, tf.SparseTensor):
            got = tf.sparse.to_dense(got).numpy().tolist()
            want = list(value) if column.repeated else ([] if value is None else [value])
        else:
            got = got.numpy()
            want = value
        if column.kind in (Kind.STRING,):
            want = [w.encode() for w in want] if isinstance(want, list) else want.encode()
        if column.kind in (Kind.TIMESTAMP, Kind.DATE, Kind.BOOL):
            continue  # stored as int64; covered by from_example above
        np.testing.assert_equal(got, want, err_msg=f"{table.TABLE}.{name}")


@pytest.mark.parametrize("table", ALL_TABLES, ids=lambda t: t.TABLE)
def test_parquet_round_trip(table):
    row = SAMPLES[table]
    buffer = io.BytesIO()
    pq.write_table(table.to_arrow([row, row]), buffer)
    back = pq.read_table(pa.BufferReader(buffer.getvalue()))
    assert back.schema.equals(table.arrow_schema(), check_metadata=False)
    assert table.from_arrow(back) == [row, row]


def test_fixed_size_embedding_column():
    schema = EmbeddingRow.arrow_schema(list_size=4)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 4)
    table = EmbeddingRow.to_arrow([SAMPLES[EmbeddingRow]], list_size=4)
    assert EmbeddingRow.from_arrow(table) == [SAMPLES[EmbeddingRow]]


def test_missing_required_feature_is_a_clear_error():
    partial = tf.train.Example()
    partial.features.feature["movie_id"].int64_list.value.append(1)
    with pytest.raises(ValueError, match="required feature 'image_jpeg' missing"):
        PosterRecord.from_example(partial.SerializeToString())


def test_examples_are_wire_identical_to_tensorflows():
    from tensorflow.core.example import example_pb2

    for table, row in SAMPLES.items():
        ours = row.to_example()
        theirs = example_pb2.Example.FromString(ours)
        assert theirs.SerializeToString(deterministic=True) == ours, table.TABLE
        assert table.from_example(theirs.SerializeToString()) == row
