"""The BigQuery consumer queries printed in docs/nightly.md, ready to run against a dataset."""

from __future__ import annotations

import datetime
import re

from tests.conftest import REPO_ROOT


def readme_bigquery_queries() -> tuple[str, str]:
    """(neighbours of a film, candidates of a user) exactly as docs/nightly.md's ``-- BigQuery``
    block prints them, with PROJECT.DATASET, film 260, user 1 and 2024-05-17 in them."""
    text = (REPO_ROOT / "docs" / "nightly.md").read_text(encoding="utf-8")
    block = text.split("-- BigQuery\n", 1)[1].split("```", 1)[0]
    statements = [s.strip() for s in block.split(";") if s.strip()]
    neighbours = next(s for s in statements if ".neighbors`" in s)
    candidates = next(s for s in statements if ".candidates`" in s)
    return neighbours, candidates


def consumer_queries(project: str, dataset: str, movie_id: int, user_id: int,
                     run_date: datetime.date) -> tuple[str, str]:  # fmt: skip
    """docs/nightly.md's two queries for one dataset, film, user and run date."""
    neighbours, candidates = readme_bigquery_queries()
    date = run_date.isoformat()

    def fill(sql: str, key: str, value: int, example: int) -> str:
        sql = sql.replace("PROJECT.DATASET", f"{project}.{dataset}")
        sql = sql.replace("'2024-05-17'", f"'{date}'")
        return re.sub(rf"\b{key} = {example}\b", f"{key} = {value}", sql)

    return fill(neighbours, "movie_id", movie_id, 260), fill(candidates, "user_id", user_id, 1)
