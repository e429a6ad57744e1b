"""The cold-start protocol: films nobody has watched yet, simulated by hiding every watch of some.

A seeded ``fraction`` of the catalogue's films is hidden: every watch of a hidden film leaves the
history that anything is trained on (co-watch vectors, the audience model, popularity), and each
user's hidden watches become the films to find. Which films are hidden depends only on the film
ids, the fraction and the seed (a SHA-256 of seed and id), so every stage that applies the
protocol (``pipelines.cowatch``, ``pipelines.train``, ``pipelines.evaluate``) hides the same films,
whatever list of films it sees: a film is hidden when its seeded hash falls below ``fraction``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Iterable
from collections.abc import Sequence

from schemas import WatchEvent


@dataclasses.dataclass(frozen=True)
class Holdout:
    """Which films the cold-start protocol hides: a fraction of the catalogue, by seed."""

    fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"--holdout_fraction must be in [0, 1), not {self.fraction}")

    def is_hidden(self, film: int) -> bool:
        """Whether the protocol hides this film (its seeded hash, as a fraction, < fraction)."""
        return _unit_hash(self.seed, int(film)) < self.fraction

    def hidden(self, films: Iterable[int]) -> frozenset[int]:
        """The hidden films among ``films`` (about ``fraction`` of them)."""
        return frozenset(int(f) for f in films if self.is_hidden(f))

    def describe(self) -> str:
        """A stable text of the setting, part of the versions of what it trains."""
        return f"holdout={self.fraction:g}/seed={self.seed}" if self.fraction else "holdout=none"


def _unit_hash(seed: int, film: int) -> float:
    digest = hashlib.sha256(f"cold-start:{seed}:{film}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclasses.dataclass(frozen=True)
class ColdSplit:
    """Visible history (what may be trained on) and the hidden watches to find, per user."""

    hidden_films: frozenset[int]
    visible: list[WatchEvent]
    targets: dict[int, set[int]]


def cold_split(events: Sequence[WatchEvent], hidden_films: frozenset[int]) -> ColdSplit:
    """Split events into the visible history and each user's hidden films."""
    visible = [e for e in events if e.movie_id not in hidden_films]
    targets: dict[int, set[int]] = collections.defaultdict(set)
    for e in events:
        if e.movie_id in hidden_films:
            targets[e.user_id].add(e.movie_id)
    return ColdSplit(hidden_films=hidden_films, visible=visible, targets=dict(targets))
