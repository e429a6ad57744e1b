"""Table definitions: the only place a field name is spelled."""

from schemas.core import ColumnSpec
from schemas.core import Kind
from schemas.core import Record
from schemas.core import column
from schemas.tables import ALL_TABLES
from schemas.tables import CandidateRow
from schemas.tables import CatalogEntry
from schemas.tables import DeadLetter
from schemas.tables import DuplicateRecord
from schemas.tables import EmbeddingRow
from schemas.tables import NeighborRow
from schemas.tables import PosterRecord
from schemas.tables import RunManifest
from schemas.tables import WatchEvent

__all__ = [
    "ALL_TABLES",
    "CandidateRow",
    "CatalogEntry",
    "ColumnSpec",
    "DeadLetter",
    "DuplicateRecord",
    "EmbeddingRow",
    "Kind",
    "NeighborRow",
    "PosterRecord",
    "Record",
    "RunManifest",
    "WatchEvent",
    "column",
]
