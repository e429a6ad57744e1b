"""One definition per table, from which every physical form is derived.

A table is a frozen dataclass whose fields are declared with :func:`column`. From that single
definition this module derives the ``tf.train.Example`` feature spec, the Arrow (Parquet) schema
and the BigQuery schema, and converts rows to and from ``tf.train.Example`` bytes and Arrow tables.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import types
from typing import Any
from typing import ClassVar
from typing import TypeVar

import pyarrow as pa

from schemas.example_proto import Example


class Kind(enum.Enum):
    """Logical column types shared by every physical form."""

    INT64 = "INT64"
    FLOAT32 = "FLOAT32"
    FLOAT64 = "FLOAT64"
    BOOL = "BOOL"
    STRING = "STRING"
    BYTES = "BYTES"
    TIMESTAMP = "TIMESTAMP"  # datetime.datetime, UTC; int64 microseconds in tf.train.Example
    DATE = "DATE"  # datetime.date; int64 days since epoch in tf.train.Example


_ARROW = {
    Kind.INT64: pa.int64(),
    Kind.FLOAT32: pa.float32(),
    Kind.FLOAT64: pa.float64(),
    Kind.BOOL: pa.bool_(),
    Kind.STRING: pa.string(),
    Kind.BYTES: pa.binary(),
    Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Kind.DATE: pa.date32(),
}
_BIGQUERY = {
    Kind.INT64: "INTEGER",
    Kind.FLOAT32: "FLOAT",
    Kind.FLOAT64: "FLOAT",
    Kind.BOOL: "BOOLEAN",
    Kind.STRING: "STRING",
    Kind.BYTES: "BYTES",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.DATE: "DATE",
}
_EPOCH_DATE = datetime.date(1970, 1, 1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """How one column is stored: its kind, whether repeated/nullable, and its meaning."""

    kind: Kind
    description: str
    repeated: bool = False
    nullable: bool = False
    fixed_size: bool = False  # a repeated column whose length is the same in every row


def column(
    kind: Kind,
    description: str,
    *,
    repeated: bool = False,
    nullable: bool = False,
    fixed_size: bool = False,
) -> Any:
    """Declare a table column (a dataclass field carrying a :class:`ColumnSpec`)."""
    if fixed_size and not repeated:
        raise ValueError("fixed_size applies to repeated columns only")
    spec = ColumnSpec(kind, description, repeated, nullable, fixed_size)
    if repeated:
        return dataclasses.field(default=(), metadata={"column": spec})
    if nullable:
        return dataclasses.field(default=None, metadata={"column": spec})
    return dataclasses.field(metadata={"column": spec})


R = TypeVar("R", bound="Record")


class _ColumnNames:
    """``Table.c.name`` -> "name": column names for SQL and Arrow, checked on access."""

    def __get__(self, obj: object, owner: type) -> types.SimpleNamespace:
        return types.SimpleNamespace(**{name: name for name in owner.column_names()})


class Record:
    """Base of every table row: derives schemas and converts rows between forms."""

    TABLE: ClassVar[str] = ""
    c: ClassVar[types.SimpleNamespace] = _ColumnNames()  # type: ignore[assignment]

    @classmethod
    def columns(cls) -> list[tuple[str, ColumnSpec]]:
        """The table's columns in declaration order."""
        return [(f.name, f.metadata["column"]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def column_names(cls) -> list[str]:
        """The table's column names in declaration order."""
        return [name for name, _ in cls.columns()]

    # ------------------------------------------------------------------ schemas
    @classmethod
    def arrow_schema(cls, list_size: int | None = None) -> pa.Schema:
        """The Arrow (Parquet) schema; ``list_size`` fixes the length of fixed-size columns."""
        fields = []
        for name, spec in cls.columns():
            arrow_type = _ARROW[spec.kind]
            if spec.repeated and spec.fixed_size and list_size is not None:
                arrow_type = pa.list_(arrow_type, list_size)
            elif spec.repeated:
                arrow_type = pa.list_(arrow_type)
            fields.append(
                pa.field(
                    name,
                    arrow_type,
                    nullable=spec.nullable or spec.repeated,
                    metadata={"description": spec.description},
                )
            )
        return pa.schema(fields, metadata={"table": cls.TABLE})

    @classmethod
    def bigquery_schema(cls) -> dict:
        """The BigQuery schema in the REST API's ``{'fields': [...]}`` form."""
        fields = []
        for name, spec in cls.columns():
            mode = "REPEATED" if spec.repeated else ("NULLABLE" if spec.nullable else "REQUIRED")
            fields.append(
                {
                    "name": name,
                    "type": _BIGQUERY[spec.kind],
                    "mode": mode,
                    "description": spec.description,
                }
            )
        return {"fields": fields}

    @classmethod
    def feature_spec(cls) -> dict:
        """The ``tf.io.parse_example`` feature spec of the table."""
        import tensorflow as tf  # seconds to import: only the stages that parse examples need it

        dtypes = {
            Kind.INT64: tf.int64,
            Kind.FLOAT32: tf.float32,
            Kind.FLOAT64: tf.float32,
            Kind.BOOL: tf.int64,
            Kind.STRING: tf.string,
            Kind.BYTES: tf.string,
            Kind.TIMESTAMP: tf.int64,
            Kind.DATE: tf.int64,
        }
        spec = {}
        for name, column_spec in cls.columns():
            dtype = dtypes[column_spec.kind]
            if column_spec.repeated or column_spec.nullable:
                spec[name] = tf.io.VarLenFeature(dtype)
            else:
                spec[name] = tf.io.FixedLenFeature([], dtype)
        return spec

    # ------------------------------------------------------------------ tf.train.Example
    def to_example(self) -> bytes:
        """Serialise the row as ``tf.train.Example`` bytes."""
        example = Example()
        for name, spec in self.columns():
            value = getattr(self, name)
            if value is None:
                continue
            values = list(value) if spec.repeated else [value]
            feature = example.features.feature[name]
            encoded = [_to_feature_value(spec.kind, v) for v in values]
            if spec.kind in (Kind.STRING, Kind.BYTES):
                feature.bytes_list.value.extend(encoded)
            elif spec.kind in (Kind.FLOAT32, Kind.FLOAT64):
                feature.float_list.value.extend(encoded)
            else:
                feature.int64_list.value.extend(encoded)
        return example.SerializeToString(deterministic=True)

    @classmethod
    def from_example(cls: type[R], serialized: bytes) -> R:
        """Parse ``tf.train.Example`` bytes written by :meth:`to_example`."""
        example = Example.FromString(serialized)
        features = example.features.feature
        kwargs = {}
        for name, spec in cls.columns():
            if name not in features:
                if not (spec.nullable or spec.repeated):
                    raise ValueError(f"{cls.TABLE}: required feature {name!r} missing")
                kwargs[name] = () if spec.repeated else None
                continue
            feature = features[name]
            if spec.kind in (Kind.STRING, Kind.BYTES):
                raw = list(feature.bytes_list.value)
            elif spec.kind in (Kind.FLOAT32, Kind.FLOAT64):
                raw = list(feature.float_list.value)
            else:
                raw = list(feature.int64_list.value)
            values = [_from_feature_value(spec.kind, v) for v in raw]
            kwargs[name] = tuple(values) if spec.repeated else values[0]
        return cls(**kwargs)

    # ------------------------------------------------------------------ Arrow
    def to_dict(self) -> dict:
        """The row as a plain dict (repeated columns as lists)."""
        out = {}
        for name, spec in self.columns():
            value = getattr(self, name)
            out[name] = list(value) if spec.repeated else value
        return out

    @classmethod
    def from_dict(cls: type[R], row: dict) -> R:
        """Build a row from a dict such as one produced by :meth:`to_dict` or Arrow."""
        kwargs = {}
        for name, spec in cls.columns():
            value = row.get(name)
            if spec.repeated:
                value = tuple(value or ())
            elif spec.kind == Kind.TIMESTAMP and value is not None:
                value = _as_utc(value)
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def to_arrow(cls, rows: list, list_size: int | None = None) -> pa.Table:
        """Rows as an Arrow table with the table's schema."""
        schema = cls.arrow_schema(list_size)
        return pa.Table.from_pylist([r.to_dict() for r in rows], schema=schema)

    @classmethod
    def arrow_of_columns(cls, columns: dict[str, Any], rows: int) -> pa.Table:
        """An Arrow table of the table's schema from whole columns (arrays or lists); a column
        given as a single value (a str, a date, a number) is that value in every row."""
        schema = cls.arrow_schema()
        arrays = []
        for field in schema:
            value = columns[field.name]
            if isinstance(value, str | int | float | datetime.date):
                value = [value] * rows
            arrays.append(pa.array(value, field.type))
        return pa.Table.from_arrays(arrays, schema=schema)

    @classmethod
    def from_arrow(cls: type[R], table: pa.Table) -> list[R]:
        """Rows of an Arrow table with the table's columns."""
        return [cls.from_dict(row) for row in table.select(cls.column_names()).to_pylist()]


def _as_utc(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


def _to_feature_value(kind: Kind, value: Any) -> Any:
    if kind == Kind.STRING:
        return value.encode("utf-8")
    if kind == Kind.TIMESTAMP:
        delta = _as_utc(value) - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if kind == Kind.DATE:
        return (value - _EPOCH_DATE).days
    if kind == Kind.BOOL:
        return int(value)
    return value


def _from_feature_value(kind: Kind, value: Any) -> Any:
    if kind == Kind.STRING:
        return value.decode("utf-8")
    if kind == Kind.TIMESTAMP:
        return _EPOCH + datetime.timedelta(microseconds=value)
    if kind == Kind.DATE:
        return _EPOCH_DATE + datetime.timedelta(days=value)
    if kind == Kind.BOOL:
        return bool(value)
    return value
