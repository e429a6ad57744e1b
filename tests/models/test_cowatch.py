"""Co-watch vectors and neighbours on a history with a known answer; the cold-start protocol."""

from __future__ import annotations

import dataclasses
import datetime

import numpy as np
import pytest

from models import collab
from models import cowatch
from models.cold_start import Holdout
from models.cold_start import cold_split
from pipelines import cowatch as cowatch_stage
from schemas import EmbeddingRow
from schemas import WatchEvent
from storage.files import read_parquet_records
from storage.history import EventBatch
from transforms.history import stats_of_batch
from transforms.neighbors import read_lists

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
GROUP_A = list(range(1, 11))
GROUP_B = list(range(11, 21))


def two_audiences(users_per_group: int = 30, seed: int = 0) -> list[WatchEvent]:
    """Users 1..N watch mostly group A films, users N+1..2N mostly group B films."""
    rng = np.random.default_rng(seed)
    events = []
    for user in range(1, 2 * users_per_group + 1):
        own, other = (GROUP_A, GROUP_B) if user <= users_per_group else (GROUP_B, GROUP_A)
        films = list(rng.choice(own, size=6, replace=False))
        if user % 3 == 0:
            films.append(int(rng.choice(other)))
        for i, film in enumerate(films):
            events.append(WatchEvent(user_id=user, movie_id=int(film), rating=4.0,
                                     watched_at=T0 + datetime.timedelta(days=i)))  # fmt: skip
    return events


@pytest.mark.parametrize("model", ["cosine", "ease"])
def test_cowatch_neighbours_find_the_audience(model):
    gram = cowatch.film_gram(cowatch.history_matrix(two_audiences()))
    lists = collab.CollabModel(model, 50.0).neighbors(gram, 3)
    for group in (GROUP_A, GROUP_B):
        for film in group:
            assert all(n in group for n, _ in lists[film]), lists[film]
    scores = [s for _, s in lists[1]]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0


def light_and_heavy_watchers() -> list[WatchEvent]:
    """Films 1 and 2 are all that 3 users watched; films 1 and 3 are two of the 42 films that
    each of 5 heavy users watched (1, 3 and 100..139)."""
    events = []
    for user, films in [(u, [1, 2]) for u in (1, 2, 3)] + [
        (u, [1, 3, *range(100, 140)]) for u in range(10, 15)
    ]:
        for i, film in enumerate(films):
            events.append(WatchEvent(user_id=user, movie_id=film, rating=4.0,
                                     watched_at=T0 + datetime.timedelta(days=i)))  # fmt: skip
    return events


def stats_of(events, holdout: Holdout = Holdout(0.0)):
    """The history statistics of the events the hold-out leaves, and every film seen."""
    visible = [e for e in events if not holdout.is_hidden(e.movie_id)]
    films_seen = np.unique([e.movie_id for e in events])
    return stats_of_batch(EventBatch.of_events(visible)), films_seen


def test_the_stage_writes_ease_neighbours_or_the_cosine_baseline(tmp_path):
    events = light_and_heavy_watchers()
    lists = {}
    for name, model, sequence, exponent in (("cosine", "cosine", 0.0, 0.0),
                                            ("ease", "ease", 0.0, 0.0),
                                            ("blended", "ease", 1.0, 0.2)):  # fmt: skip
        config = cowatch.CowatchConfig(
            dim=2, min_watches=1, model=model, ease_lambda=1.0, sequence_weight=sequence,
            popularity_exponent=exponent,
        )
        report = cowatch_stage.compute_and_write(*stats_of(events), str(tmp_path), config,
                                                 Holdout(0.0))  # fmt: skip
        assert report["config"]["model"] == model
        version = report["model_version"]
        lists[name] = dict(
            read_lists(f"{tmp_path}/{version}/{cowatch_stage.NEIGHBORS_TABLE}/*.parquet")
        )
    fg = stats_of(events)[0].gram
    assert fg.sequence is not None and fg.sequence.sum() > 0
    blended = collab.ease_sequence_neighbors(fg, 1.0, 50, 1.0, 0.2)
    for model, expected in (("cosine", collab.cosine_neighbors(fg, 50)),
                            ("ease", collab.ease_neighbors(fg, 1.0, 50)),
                            ("blended", blended)):  # fmt: skip
        assert set(lists[model]) == set(expected)
        for film, found in lists[model].items():
            assert [n for n, _ in found] == [n for n, _ in expected[film]]
            assert np.allclose([s for _, s in found], [s for _, s in expected[film]], atol=1e-6)
    assert lists["cosine"][1][0][0] == 3 and lists["ease"][1][0][0] == 2
    assert lists["blended"] != lists["ease"]
    assert cowatch.CowatchConfig().model == "ease"


def test_blended_neighbours_add_what_users_watch_next():
    """Films 1..6 are watched by the same users (EASE cannot tell them apart), but always in
    the order 1, 2, 3, ...: with the sequence weight, a film's best neighbour is its successor;
    the popularity exponent lowers a neighbour that everyone watches."""
    events = []
    for user in range(1, 21):
        for i, film in enumerate([1, 2, 3, 4, 5, 6] + ([7] if user <= 4 else [8])):
            events.append(WatchEvent(user_id=user, movie_id=film, rating=4.0,
                                     watched_at=T0 + datetime.timedelta(days=i)))  # fmt: skip
    fg = stats_of(events)[0].gram
    plain = collab.ease_sequence_neighbors(fg, 1.0, 5, sequence_weight=0.0, popularity_exponent=0.0)
    blended = collab.ease_sequence_neighbors(fg, 1.0, 5, sequence_weight=1.0,
                                             popularity_exponent=0.0)  # fmt: skip
    assert [n for n, _ in blended[3]][:1] == [4] and [n for n, _ in blended[5]][:1] == [6]
    assert [n for n, _ in plain[3]][:1] != [4]
    # the mean best neighbour scores 1
    assert np.isclose(np.mean([v[0][1] for v in blended.values() if v]), 1.0)
    # 7 (4 watchers) ranks below 8 (16) by EASE's scores; divided by the watchers, above
    rank = {e: [n for n, _ in collab.ease_sequence_neighbors(fg, 1.0, 7, 0.0, e)[6]]
            for e in (0.0, 1.0)}  # fmt: skip
    assert rank[0.0].index(7) > rank[0.0].index(8) and rank[1.0][:2] == [7, 8]


def test_cowatch_vectors_separate_the_audiences():
    ids, vectors = cowatch.cowatch_vectors(
        cowatch.history_matrix(two_audiences()), cowatch.CowatchConfig(dim=4)
    )
    assert vectors.shape == (20, 4) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    row = {m: i for i, m in enumerate(ids.tolist())}
    sims = vectors @ vectors.T
    same = np.mean([sims[row[a], row[b]] for a in GROUP_A for b in GROUP_A if a != b])
    across = np.mean([sims[row[a], row[b]] for a in GROUP_A for b in GROUP_B])
    assert same > across + 0.5, (same, across)


@pytest.mark.parametrize("model", ["cosine", "ease"])
def test_cowatch_vectors_factorise_the_chosen_models_matrix(model):
    """With as many dimensions as films, the vectors' cosines are those of the exact
    factorisation of the model's symmetric part (its positive eigenvalues), so they come from
    the model that gives the neighbours; and one solve gives both the same as separately."""
    fg = cowatch.film_gram(cowatch.history_matrix(two_audiences()))
    config = cowatch.CowatchConfig(dim=len(fg.films), model=model, ease_lambda=5.0)
    ids, vectors = cowatch.gram_vectors(fg, config)
    matrix = collab.CollabModel(model, 5.0).matrix(fg).astype(np.float64)
    values, basis = np.linalg.eigh((matrix + matrix.T) / 2)
    exact = basis * np.sqrt(np.maximum(values, 0.0))
    exact /= np.linalg.norm(exact, axis=1, keepdims=True)
    assert np.array_equal(ids, fg.films)
    assert np.allclose(vectors @ vectors.T, exact @ exact.T, atol=1e-4)
    other = "ease" if model == "cosine" else "cosine"
    theirs = cowatch.gram_vectors(fg, dataclasses.replace(config, model=other))[1]
    assert not np.allclose(theirs @ theirs.T, vectors @ vectors.T, atol=1e-2)
    small = dataclasses.replace(config, dim=4)
    together = cowatch.model_outputs(fg, small)
    assert np.array_equal(together[0], cowatch.gram_vectors(fg, small)[0])
    assert np.allclose(together[1], cowatch.gram_vectors(fg, small)[1], atol=1e-5)
    assert together[2] == collab.collab_neighbors(fg, model, small.neighbors_k, 5.0)


def test_cowatch_vectors_are_deterministic_and_need_enough_films():
    matrix = cowatch.history_matrix(two_audiences())
    first = cowatch.cowatch_vectors(matrix, cowatch.CowatchConfig(dim=4))
    second = cowatch.cowatch_vectors(matrix, cowatch.CowatchConfig(dim=4))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    with pytest.raises(ValueError, match="too few"):
        cowatch.cowatch_vectors(matrix, cowatch.CowatchConfig(dim=4, min_watches=10_000))


def test_holdout_is_seeded_and_independent_of_the_film_list():
    holdout = Holdout(0.2, seed=7)
    films = range(1, 5001)
    hidden = holdout.hidden(films)
    assert 0.17 < len(hidden) / 5000 < 0.23
    assert holdout.hidden(range(1, 2001)) == {f for f in hidden if f <= 2000}
    assert Holdout(0.2, seed=8).hidden(films) != hidden
    assert Holdout(0.0).hidden(films) == frozenset()


def test_cold_split_never_lets_a_hidden_watch_into_training(tmp_path):
    events = two_audiences()
    holdout = Holdout(0.3, seed=1)
    hidden = holdout.hidden({e.movie_id for e in events})
    assert hidden, "the test needs hidden films"
    split = cold_split(events, hidden)
    assert not any(e.movie_id in hidden for e in split.visible)
    assert sum(len(t) for t in split.targets.values()) == len(
        {(e.user_id, e.movie_id) for e in events if e.movie_id in hidden}
    )
    report = cowatch_stage.compute_and_write(
        *stats_of(events, holdout), str(tmp_path), cowatch.CowatchConfig(dim=4), holdout
    )
    assert set(report["hidden_films"]) == hidden
    assert report["events_used"] == len(split.visible)
    version = report["model_version"]
    pattern = f"{tmp_path}/{version}/embeddings/*/*.parquet"
    vectors = read_parquet_records(pattern, EmbeddingRow)
    assert vectors and not {v.movie_id for v in vectors} & hidden
    lists = dict(read_lists(f"{tmp_path}/{version}/{cowatch_stage.NEIGHBORS_TABLE}/*.parquet"))
    assert lists and not any(n in hidden for v in lists.values() for n, _ in v)
    assert not set(lists) & hidden
    again = cowatch_stage.compute_and_write(
        *stats_of(events), str(tmp_path), cowatch.CowatchConfig(dim=4), Holdout(0.0)
    )
    assert again["model_version"] != version


def test_the_stage_dead_letters_bad_history_rows_and_counts_them(tmp_path):
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"{e.user_id},{e.movie_id},{e.rating},{int(e.watched_at.timestamp())}"
              for e in two_audiences()]  # fmt: skip
    bad = ["7,not-a-film,4.0,1700000000", "7,3,nan,1700000000", "7,3,6.0,1700000000",
           "7,3,4.0,-1700000000", "-7,3,4.0,1700000000"]  # fmt: skip
    history = tmp_path / "ratings.csv"
    history.write_text("\n".join(lines + bad) + "\n")
    report = cowatch_stage.run([f"--watch_history={history}", f"--output={tmp_path / 'v'}",
                                "--cowatch_dim=4"])  # fmt: skip
    assert report["dead_lettered"] == len(bad) and report["input_rows"] == len(lines) - 1 + len(bad)
    assert report["events"] == len(lines) - 1 and report["films_with_vector"] == 20
    assert report["accounting_ok"]
    assert report["dead_letter_reasons"] == {
        "watch_history/bad_movie_id": 1, "watch_history/rating_not_finite": 1,
        "watch_history/rating_out_of_range": 1, "watch_history/timestamp_invalid": 1,
        "watch_history/bad_user_id": 1,
    }  # fmt: skip
