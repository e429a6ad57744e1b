"""Deterministic sharded writers: TFRecord framing, shard names, stable contents."""

from __future__ import annotations

import pathlib

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from schemas import DeadLetter
from storage.files import parquet_encoder
from storage.files import read_tfrecord_records
from storage.files import read_tfrecords
from storage.files import shard_of
from storage.files import tfrecord_frame
from tests.conftest import local_pipeline
from transforms.sinks import BAD_RECORD
from transforms.sinks import CORRUPT_FILE
from transforms.sinks import ReadTFRecordFiles
from transforms.sinks import WriteShards


def test_tfrecord_framing_is_read_by_tensorflow(tmp_path):
    records = [b"", b"a", b"hello" * 1000]
    path = tmp_path / "x.tfrecord"
    path.write_bytes(b"".join(tfrecord_frame(r) for r in records))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    assert list(read_tfrecords(path.read_bytes())) == records


def test_corrupt_tfrecord_is_detected():
    data = bytearray(tfrecord_frame(b"payload"))
    data[14] ^= 0xFF
    with pytest.raises(ValueError, match="CRC"):
        list(read_tfrecords(bytes(data)))


def test_shard_of_is_stable():
    assert shard_of(12345, 7) == shard_of(12345, 7)
    assert {shard_of(i, 4) for i in range(100)} == {0, 1, 2, 3}


def _dead(i: int) -> DeadLetter:
    return DeadLetter(
        run_id="run-0001",
        stage="fetch",
        reason="http_500",
        detail=f"row {i}",
        input_row=str(i),
        attempts=1,
        line_number=i,
    )


def _write(out: pathlib.Path, rows: list[DeadLetter]) -> list[tuple[str, int]]:
    with local_pipeline() as p:
        written = (
            p
            | beam.Create(rows)
            | WriteShards(
                str(out / "dl"),
                ".parquet",
                3,
                parquet_encoder(DeadLetter),
                sort_key=lambda d: d.line_number,
            )
        )
        assert_that(
            written | beam.Map(lambda pn: pn[1]) | beam.CombineGlobally(sum),
            equal_to([len(rows)]),
            label="CountWritten",
        )
    files = sorted(out.glob("dl-*"))
    return [(str(f), pq.read_table(f).num_rows) for f in files]


def test_write_shards_is_deterministic_and_complete(tmp_path):
    rows = [_dead(i) for i in range(1, 21)]
    first = _write(tmp_path / "a", rows)
    second = _write(tmp_path / "b", list(reversed(rows)))
    names = sorted(pathlib.Path(p).name for p, _ in first)
    assert names == [f"dl-0000{i}-of-00003.parquet" for i in range(3)]
    assert sum(n for _, n in first) == 20
    for (pa_, _), (pb, _) in zip(first, second, strict=True):
        assert pathlib.Path(pa_).read_bytes() == pathlib.Path(pb).read_bytes()
    back = sorted(
        (r for p, _ in first for r in DeadLetter.from_arrow(pq.read_table(p))),
        key=lambda d: d.line_number,
    )
    assert back == rows
    for p, _ in first:
        lines = [d.line_number for d in DeadLetter.from_arrow(pq.read_table(p))]
        assert lines == sorted(lines)


def test_empty_input_still_writes_every_shard(tmp_path):
    files = _write(tmp_path, [])
    assert len(files) == 3 and all(n == 0 for _, n in files)
    assert all(pq.read_table(p).num_rows == 0 for p, _ in files)


def test_shards_no_record_reaches_are_written_empty_beside_the_others(tmp_path):
    files = _write(tmp_path, [_dead(1)])
    assert len(files) == 3 and sorted(n for _, n in files) == [0, 0, 1]


def _frames(rows) -> bytes:
    return b"".join(tfrecord_frame(r.to_example()) for r in rows)


def _check_read(pattern: str, lines: list[int], dead: list[tuple[str, str, str]]) -> None:
    """ReadTFRecordFiles reads records with these line numbers and dead-letters (stage, reason,
    input_row) these."""
    with local_pipeline() as p:
        out = p | ReadTFRecordFiles(pattern, DeadLetter, "run-0007", stage="read")
        read = out.records | "Lines" >> beam.Map(lambda r: r.line_number)
        assert_that(read, equal_to(lines), label="CheckRecords")
        letters = out.dead_letter | "Keys" >> beam.Map(lambda d: (d.stage, d.reason, d.input_row))
        assert_that(letters, equal_to(dead), label="CheckDeadLetters")
        named = out.dead_letter | "NamesFile" >> beam.Map(
            lambda d: d.run_id == "run-0007" and d.detail.startswith(f"{_file_of(d)}: ")
        )
        assert_that(named, equal_to([True] * len(dead)), label="CheckDetailsNameTheFile")


def _file_of(letter: DeadLetter) -> str:
    return letter.input_row.split(" ")[0].removeprefix("file=")


def test_a_corrupt_tfrecord_file_is_one_dead_letter_naming_it(tmp_path):
    (tmp_path / "a.tfrecord").write_bytes(_frames(_dead(i) for i in range(1, 6)))
    data = bytearray(_frames(_dead(i) for i in range(6, 11)))
    third = len(_frames(_dead(i) for i in range(6, 8)))  # where record 8 starts
    data[third + 20] ^= 0xFF  # inside record 8's payload: its data CRC fails
    bad = tmp_path / "b.tfrecord"
    bad.write_bytes(bytes(data))
    # the good file, and b's records before the corruption
    _check_read(str(tmp_path / "*.tfrecord"), [1, 2, 3, 4, 5, 6, 7],
                [("read", CORRUPT_FILE, f"file={bad} record=2")])  # fmt: skip


def test_a_record_that_is_not_an_example_is_dead_lettered_and_the_file_goes_on(tmp_path):
    data = _frames([_dead(1)]) + tfrecord_frame(b"not an example") + _frames([_dead(3)])
    path = tmp_path / "c.tfrecord"
    path.write_bytes(data)
    _check_read(str(path), [1, 3], [("read", BAD_RECORD, f"file={path} record=1")])


def test_reading_a_corrupt_file_outside_a_pipeline_names_it(tmp_path):
    data = bytearray(_frames([_dead(1)]))
    data[-1] ^= 0xFF
    (tmp_path / "d.tfrecord").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{tmp_path / 'd.tfrecord'}: corrupt TFRecord data CRC"):
        read_tfrecord_records(str(tmp_path / "*.tfrecord"), DeadLetter)
