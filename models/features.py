"""What the training data is: feature keys, the label key, vocabulary names, splits, genre sets.

The one place (as in the TFX taxi template's ``features.py``) where the training stage names its
features. Raw feature keys are columns of :class:`schemas.PosterRecord`, checked against the
schema when this module is imported; transformed keys are the outputs of
:func:`models.preprocessing.preprocessing_fn`, and the decoded image keys are added to them by the
training input pipeline (:func:`models.training.transformed_batches`).

Genre sets (``--genre_set``) map each MovieLens genre to the class it counts for; genres outside a
set are ignored, and a poster with no genre in the set has an all-zero label (it is kept in the
transformed data but left out of training and evaluation).
"""

from __future__ import annotations

from schemas import PosterRecord
from schemas.genres import MOVIELENS_GENRES


def _poster_column(name: str) -> str:
    """``name``, after checking that it is a column of ``PosterRecord``."""
    if name not in PosterRecord.column_names():
        raise ValueError(f"{name!r} is not a column of {PosterRecord.TABLE}")
    return name


# Raw features: the PosterRecord columns the transform reads.
MOVIE_ID_KEY = _poster_column("movie_id")
IMAGE_BYTES_KEY = _poster_column("image_jpeg")
GENRES_KEY = _poster_column("genres")
RAW_FEATURE_KEYS: tuple[str, ...] = (MOVIE_ID_KEY, IMAGE_BYTES_KEY, GENRES_KEY)

# Transformed features. MOVIE_ID_KEY and IMAGE_BYTES_KEY (the poster's JPEG bytes: the examples
# store no pixels) pass through unchanged.
LABEL_KEY = "genre_labels"
"""float32 [num_classes]: multi-hot genre classes, column j is line j of the genre vocabulary."""
SPLIT_KEY = "split"
"""int64: index into ``SPLITS``, from a hash of the movie id."""

# Decoded from IMAGE_BYTES_KEY by the training input pipeline, not stored.
IMAGE_KEY = "image"
"""float32 [height, width, 3]: RGB 0..255 at the backbone's input size (normalised in the model)."""
PIXELS_KEY = "pixels_image"
"""float32 [64, 64, 3]: RGB 0..255 at the raw-pixels baseline's input size."""

# Vocabularies (tf.Transform asset names).
GENRE_VOCABULARY = "genres"

# Deterministic split: farmhash of the decimal movie id into SPLIT_BUCKETS buckets.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = range(3)
SPLIT_BUCKETS = 10
TRAIN_BUCKETS = 8
VALIDATION_BUCKETS = 1

OBJECTIVES: tuple[str, ...] = ("genres", "audience", "both")
"""What the poster embedding learns (``--objective``; see :mod:`models.training`)."""
DEFAULT_OBJECTIVE = "audience"
"""Chosen on real data (benchmarks/candidates_real.py): audience-trained poster neighbours find
about twice the watches of genre-trained ones, warm and cold."""

SIX_GENRES: tuple[str, ...] = ("Action", "Comedy", "Drama", "Horror", "Romance", "Thriller")
"""The six genres of the published poster-only genre classifiers."""

GENRE_GROUPS: dict[str, tuple[str, ...]] = {
    "action_adventure": ("Action", "Adventure", "War", "Western", "IMAX"),
    "comedy": ("Comedy",),
    "crime_thriller": ("Crime", "Film-Noir", "Mystery", "Thriller"),
    "documentary": ("Documentary",),
    "drama": ("Drama",),
    "family": ("Animation", "Children", "Musical"),
    "fantasy_scifi": ("Fantasy", "Sci-Fi"),
    "horror": ("Horror",),
    "romance": ("Romance",),
}
"""Groups of genres that often go together (and share a poster look), one class per group."""

GENRE_SETS: dict[str, dict[str, str]] = {
    "all": {genre: genre for genre in MOVIELENS_GENRES},
    "six": {genre: genre for genre in SIX_GENRES},
    "groups": {genre: group for group, members in GENRE_GROUPS.items() for genre in members},
}
"""For each ``--genre_set``: MovieLens genre -> class name."""
DEFAULT_GENRE_SET = "six"


def genre_mapping(genre_set: str) -> dict[str, str]:
    """MovieLens genre -> class for a genre set; ValueError naming the choices otherwise."""
    try:
        return GENRE_SETS[genre_set]
    except KeyError:
        raise ValueError(
            f"unknown genre set {genre_set!r}: use one of {sorted(GENRE_SETS)}"
        ) from None


def class_names(genre_set: str) -> tuple[str, ...]:
    """The classes of a genre set, sorted (the multi-hot label has one column per class)."""
    return tuple(sorted(set(genre_mapping(genre_set).values())))


def genre_classes(genres: tuple[str, ...] | list[str], genre_set: str) -> tuple[str, ...]:
    """The sorted classes a film with these MovieLens genres belongs to in a genre set."""
    mapping = genre_mapping(genre_set)
    return tuple(sorted({mapping[g] for g in genres if g in mapping}))


def split_of_bucket(bucket: int) -> int:
    """The split index (``TRAIN``, ``VALIDATION``, ``TEST``) of a hash bucket."""
    if bucket < TRAIN_BUCKETS:
        return TRAIN
    if bucket < TRAIN_BUCKETS + VALIDATION_BUCKETS:
        return VALIDATION
    return TEST
