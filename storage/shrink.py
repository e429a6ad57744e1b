"""The guard that keeps a broken night from replacing good candidates.

Before a run date's candidates are published, their users and rows are compared with those of
the latest date already published (on or before it, the date itself included when it is being
replaced): a date with no candidates, or whose users or rows fall by more than ``max_shrink``
(a fraction) is refused with one line naming both counts, and nothing is replaced.
``allow`` (``--allow_shrink``) publishes it anyway. Both warehouses count with SQL where the rows
are (DuckDB over the staged Parquet, BigQuery over the staging table), so the launcher holds two
numbers, not the rows.
"""

from __future__ import annotations

import dataclasses
import datetime

DEFAULT_MAX_SHRINK = 0.5


@dataclasses.dataclass(frozen=True)
class Counts:
    """A date's candidate rows and distinct users."""

    rows: int
    users: int


@dataclasses.dataclass(frozen=True)
class ShrinkGuard:
    """How far a date's candidates may fall below the latest published date's."""

    max_shrink: float = DEFAULT_MAX_SHRINK
    allow: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_shrink <= 1.0:
            raise ValueError(f"--max_shrink must be between 0 and 1, not {self.max_shrink}")

    def check(
        self,
        run_date: datetime.date,
        incoming: Counts,
        previous_date: datetime.date | None,
        previous: Counts | None,
    ) -> None:
        """Raise :class:`ShrinkRefused` when ``incoming`` may not replace what is published."""
        if self.allow:
            return
        where = "no date is published yet"
        if previous is not None:
            where = (f"the latest published date {previous_date} has {previous.users:,} users "
                     f"and {previous.rows:,} rows")  # fmt: skip
        if incoming.rows == 0:
            raise ShrinkRefused(
                f"refused to publish {run_date}: it has no candidates ({where}); nothing was "
                "replaced — check the watch history, or pass --allow_shrink to publish it anyway"
            )
        if previous is None:
            return
        floor = 1.0 - self.max_shrink
        if incoming.users < floor * previous.users or incoming.rows < floor * previous.rows:
            raise ShrinkRefused(
                f"refused to publish {run_date}: its candidates have {incoming.users:,} users "
                f"and {incoming.rows:,} rows, but {where} (a fall of more than --max_shrink="
                f"{self.max_shrink:g}); nothing was replaced — check the watch history, or "
                "pass --allow_shrink to publish it anyway"
            )


class ShrinkRefused(ValueError):
    """A run date's candidates would have replaced far more than they hold."""
