"""Training the poster embedding: a genre warm-up, then semi-hard triplet metric learning.

The model is a registry backbone (its normalisation layer in front), global average pooling, a
linear ``embedding_dim`` embedding layer and a genre-logits head on it. Training runs on the
tf.Transform output (:mod:`models.preprocessing`):

1. **Features once.** The backbone is split at a block boundary into a frozen *trunk* and a
   *tail* of its last ``unfreeze_blocks`` blocks (blocks are runs of layers sharing a name prefix:
   ``fire8``, ``fire9`` for SqueezeNet, ``block4`` for the small CNN). One pass over the
   posters, decoded from the transformed examples' JPEG bytes by :func:`transformed_batches`,
   computes the trunk's output for every poster (and, with ``flip_augment``,
   for the horizontally flipped training posters), the untrained backbone's pooled features (the
   tail applied with its original weights) and the raw-pixels baseline's features, and keeps
   only those: the trunk is frozen throughout, so training the tail on cached trunk outputs is
   exactly training the whole model with the trunk frozen, at a fraction of the cost.
2. **Warm-up.** Backbone frozen: a fixed standardisation of the pooled features (training-split
   statistics), dropout, the embedding layer and the head learn from the pooled features with a
   multi-label binary cross-entropy from logits, each class's positives and negatives weighted
   to equal total weight (inverse frequency), and L2 on both kernels.
3. **Metric learning.** The semi-hard triplet loss (:mod:`models.losses`, angular distance,
   margin ``triplet_margin``) on the L2-normalised embedding, plus ``classification_weight``
   times the balanced cross-entropy so the head stays calibrated, while the tail's blocks are
   unfrozen progressively: the last block first, one more per stage. BatchNorm layers stay frozen
   and the backbone always runs in inference mode.

Each phase (and unfreezing stage) keeps the weights of its epoch with the lowest validation loss
and stops after ``patience`` epochs without improvement. The exported model is ``image ->
normalisation -> backbone -> pooling -> standardisation -> embedding -> L2Normalize``: float32
RGB 0..255 in, unit vectors out, the embed stage's contract. Each epoch logs one line.
TensorFlow places the work on a GPU when one is visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models import evaluation
from models import features
from models import pixels
from models.image_ops import decode_and_resize
from models.layers import L2Normalize
from models.layers import preprocess_layer
from models.losses import BalancedBinaryCrossentropy
from models.losses import SemiHardTripletLoss
from models.losses import balanced_class_weights
from models.registry import get_spec
from models.registry import load_embedding_model
from monitoring import progress

EXPORT_PREFIX = "poster_embedding"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "genre_logits"
_LOG = logging.getLogger(__name__)
_BN_TYPES = (keras.layers.BatchNormalization,)
VARIANCE_FLOOR = 1e-3
OBJECTIVES = features.OBJECTIVES
DEFAULT_L2 = {"genres": 1e-3, "audience": 0.1, "both": 0.1}
"""L2 on the head's kernels by objective, chosen on real data (benchmarks/candidates_real.py):
the co-watch targets are noisy, and a strongly regularised map finds more cold-start watches."""
DEFAULT_OBJECTIVE = features.DEFAULT_OBJECTIVE


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (the training stage's flags)."""

    backbone: str = "squeezenet_v1_1"
    weights: str | None = None
    genre_set: str = features.DEFAULT_GENRE_SET
    embedding_dim: int = 128
    warmup_epochs: int = 40
    metric_epochs: int = 8
    triplet_margin: float = 0.1
    unfreeze_blocks: int = 2
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    batch_size: int = 64
    dropout: float = 0.5
    l2: float | None = None
    patience: int = 5
    classification_weight: float = 1.0
    flip_augment: bool = True
    seed: int = 0
    objective: str = DEFAULT_OBJECTIVE
    warmup_runs: int = 5

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.l2 is None:
            object.__setattr__(self, "l2", DEFAULT_L2[self.objective])
        features.genre_mapping(self.genre_set)
        get_spec(self.backbone)
        if self.embedding_dim < 1 or self.batch_size < 2:
            raise ValueError("need --embedding_dim >= 1 and --batch_size_train >= 2")
        if min(self.warmup_epochs, self.metric_epochs, self.unfreeze_blocks) < 0:
            raise ValueError("epochs and --unfreeze_blocks must be >= 0")
        if self.triplet_margin < 0 or self.l2 < 0 or not 0 <= self.dropout < 1:
            raise ValueError("need --triplet_margin >= 0, --l2 >= 0 and 0 <= dropout < 1")
        if self.patience < 1:
            raise ValueError("--patience must be >= 1")
        if self.warmup_runs < 1:
            raise ValueError("--warmup_runs must be >= 1")

    @property
    def averaged_runs(self) -> int:
        """Warm-up runs whose embedding layers are averaged (``audience`` only; else 1)."""
        return self.warmup_runs if self.objective == "audience" else 1

    @property
    def uses_audience(self) -> bool:
        """Whether the embedding learns the films' co-watch vectors (audience or both)."""
        return self.objective in ("audience", "both")

    @property
    def input_size(self) -> tuple[int, int]:
        """The backbone's input size (height, width): the transform resizes posters to it."""
        return tuple(get_spec(self.backbone).input_size)


@dataclasses.dataclass
class SplitData:
    """The cached inputs of one split: labels, trunk outputs and frozen baseline features."""

    movie_ids: np.ndarray
    labels: np.ndarray
    trunk: np.ndarray
    pooled: np.ndarray
    pixels: np.ndarray
    images: np.ndarray | None = None
    flipped_trunk: np.ndarray | None = None
    flipped_pooled: np.ndarray | None = None
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.movie_ids)

    def training_targets(self, attribute: str) -> np.ndarray | None:
        """The co-watch targets, repeated when flipped copies of ``attribute`` are cached."""
        if self.targets is None or getattr(self, f"flipped_{attribute}") is None:
            return self.targets
        return np.concatenate([self.targets, self.targets])

    def training_set(self, attribute: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) for training: ``trunk`` or ``pooled``, plus flipped copies if cached."""
        inputs = getattr(self, attribute)
        flipped = getattr(self, f"flipped_{attribute}")
        if flipped is None:
            return inputs, self.labels
        return np.concatenate([inputs, flipped]), np.concatenate([self.labels, self.labels])


@dataclasses.dataclass
class PosterData:
    """Every split's cached inputs, and how many posters had no class of the genre set."""

    splits: dict[int, SplitData]
    unlabelled: dict[int, int]

    def split(self, index: int) -> SplitData:
        """One split's data; ValueError when the split is empty."""
        data = self.splits.get(index)
        if data is None or len(data) == 0:
            raise ValueError(f"the {features.SPLITS[index]} split has no labelled posters")
        return data


def backbone_blocks(backbone: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """The backbone's blocks in order: (name prefix, layers) runs of layers with weights.

    A block starts at each layer with weights whose name prefix (up to the first ``_``) differs
    from the current block's; layers without weights (activations, pools) join the block before
    them, and those before the first weighted layer belong to no block.
    """
    blocks: list[tuple[str, list[keras.layers.Layer]]] = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        prefix = layer.name.split("_", 1)[0]
        if layer.weights and (not blocks or blocks[-1][0] != prefix):
            blocks.append((prefix, [layer]))
        elif blocks:
            blocks[-1][1].append(layer)
    return blocks


def split_backbone(
    backbone: keras.Model, tail_blocks: int
) -> tuple[keras.Model, keras.Model, list[tuple[str, list[keras.layers.Layer]]]]:
    """(trunk, tail, tail's blocks): the backbone cut before its last ``tail_blocks`` blocks.

    Trunk and tail share the backbone's layers (training the tail trains the backbone).
    """
    blocks = backbone_blocks(backbone)
    if tail_blocks > len(blocks):
        raise ValueError(
            f"--unfreeze_blocks={tail_blocks}, but {backbone.name} has {len(blocks)} blocks "
            f"({[name for name, _ in blocks]})"
        )
    if tail_blocks == 0:
        inputs = keras.Input(shape=backbone.output.shape[1:], name="trunk_output")
        return backbone, keras.Model(inputs, keras.layers.Identity()(inputs)), []
    tail = blocks[-tail_blocks:]
    cut = tail[0][1][0].input
    try:
        trunk_model = keras.Model(backbone.input, cut, name=f"{backbone.name}_trunk")
        tail_model = keras.Model(cut, backbone.output, name=f"{backbone.name}_tail")
    except ValueError as exc:
        raise ValueError(
            f"{backbone.name} cannot be cut before block {tail[0][0]!r} (the tail needs more than "
            f"the one tensor there): {exc}"
        ) from exc
    return trunk_model, tail_model, tail


def freeze(backbone: keras.Model) -> None:
    """Make every layer of the backbone non-trainable."""
    for layer in backbone.layers:
        layer.trainable = False


def unfreeze_last(blocks: list[tuple[str, list[keras.layers.Layer]]], count: int) -> list[str]:
    """Make the last ``count`` blocks trainable, BatchNorm layers excepted; return their names."""
    chosen = blocks[len(blocks) - count :] if count else []
    for _, layers in chosen:
        for layer in layers:
            layer.trainable = not isinstance(layer, _BN_TYPES)
    return [name for name, _ in chosen]


@keras.saving.register_keras_serializable(package="poster_recs")
class InferenceMode(keras.layers.Layer):
    """Runs a wrapped model with ``training=False`` always (frozen BatchNorm, no dropout)."""

    def __init__(self, inner: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, inputs: Any) -> Any:
        """The wrapped model in inference mode."""
        return self.inner(inputs, training=False)

    def compute_output_spec(self, inputs: Any) -> Any:
        """The wrapped model's output spec."""
        return self.inner.compute_output_spec(inputs)


def _pool(x: keras.KerasTensor) -> keras.KerasTensor:
    """Global average pooling of feature maps; vectors pass unchanged."""
    if len(x.shape) == 4:
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return x


class EpochLog(keras.callbacks.Callback):
    """Logs one line per epoch: the phase, the epoch, the losses and the seconds it took."""

    def __init__(self, phase: str, epochs: int) -> None:
        super().__init__()
        self._phase = phase
        self._epochs = epochs
        self._start = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Show the phase's epochs on the console."""
        progress.set_total(f"{self._phase} epochs", self._epochs)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Log the epoch's losses."""
        figures = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
        _LOG.info(
            "%s epoch %d/%d: %s (%.1f s)",
            self._phase,
            epoch + 1,
            self._epochs,
            figures,
            time.perf_counter() - self._start,
        )
        progress.advance(f"{self._phase} epochs")


def _batched_predict(fn, arrays: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` over ``arrays`` in batches, concatenated as float32 NumPy."""
    outputs = [
        np.asarray(fn(tf.constant(arrays[i : i + batch_size])), dtype=np.float32)
        for i in range(0, len(arrays), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


class PosterTrainer:
    """The backbone split for training, the embedding layer and the genre head."""

    def __init__(self, config: TrainConfig, num_classes: int) -> None:
        self.config = config
        self.num_classes = num_classes
        spec = get_spec(config.backbone)
        self.preprocess = spec.preprocess
        self.input_size = tuple(spec.input_size)
        em = load_embedding_model(config.backbone, config.weights)
        self.backbone = em.keras_model.get_layer("backbone")
        self.pixels_model = load_embedding_model("pixels").keras_model
        keras.utils.set_random_seed(config.seed)
        freeze(self.backbone)
        trunk, tail, self.tail_blocks = split_backbone(self.backbone, config.unfreeze_blocks)
        self.tail = tail
        self.trunk = self._with_preprocessing(trunk)
        self.frozen_features = tf.function(
            lambda x: _pool_tensor(self.tail(x, training=False)), reduce_retracing=True
        )
        self._trunk_fn = tf.function(lambda x: self.trunk(x, training=False), reduce_retracing=True)
        self.normalisation: keras.layers.Normalization | None = None
        self.dropout = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")
        self._new_layers()
        self.history: dict[str, list[dict[str, float]]] = {}
        self.warmup_members: list[tuple[np.ndarray, np.ndarray]] = []

    def build(self, train: SplitData) -> None:
        """Standardise pooled features with the training split's statistics; build the model.

        The standardisation (a Keras ``Normalization`` layer with fixed statistics, part of the
        exported model) puts features of any backbone on one scale for the linear layers; a
        variance floor keeps channels that are constant on the training posters harmless.
        """
        pooled = train.pooled.astype(np.float64)
        variance = pooled.var(axis=0)
        variance = np.maximum(variance, VARIANCE_FLOOR * max(float(variance.mean()), 1e-12))
        self.normalisation = keras.layers.Normalization(
            mean=pooled.mean(axis=0).tolist(),
            variance=variance.tolist(),
            name="feature_normalisation",
        )
        self._model = None

    @property
    def model(self) -> keras.Model:
        """Trunk output -> unit embedding and genre logits (after :meth:`build`)."""
        if self.normalisation is None:
            raise RuntimeError("call build(train) first")
        if self._model is None:
            self._model = self._metric_model()
        return self._model

    def _with_preprocessing(self, trunk: keras.Model) -> keras.Model:
        """image 0..255 -> the backbone's normalisation -> trunk."""
        inputs = keras.Input(shape=(*self.input_size, 3), dtype="float32", name="image")
        x = inputs
        layer = preprocess_layer(self.preprocess)
        if layer is not None:
            x = layer(x)
        return keras.Model(inputs, trunk(x), name="trunk_with_preprocessing")

    def _metric_model(self) -> keras.Model:
        """Trunk output -> tail (inference mode) -> pool -> embedding -> (unit vector, logits)."""
        inputs = keras.Input(shape=self.tail.input.shape[1:], name="trunk_output")
        x = _pool(InferenceMode(self.tail, name="tail")(inputs))
        return keras.Model(inputs, self._outputs(x), name="metric_model")

    def _outputs(self, pooled: keras.KerasTensor) -> dict[str, keras.KerasTensor]:
        """Pooled features -> the unit embedding and the genre logits.

        With the audience objective alone the genre head reads the embedding through a stop
        gradient: it reports how much genre the audience embedding holds without shaping it.
        """
        embedding = self.embedding(self.dropout(self.normalisation(pooled)))
        unit = L2Normalize(name="unit_embedding", dtype="float32")(embedding)
        head_input = embedding
        if self.config.objective == "audience":
            head_input = keras.layers.Lambda(keras.ops.stop_gradient, name="genre_probe")(embedding)
        return {EMBEDDING_OUTPUT: unit, LOGITS_OUTPUT: self.head(head_input)}

    def _warmup_model(self, feature_dim: int) -> keras.Model:
        """Pooled backbone features -> dropout -> embedding -> logits (and unit embedding)."""
        inputs = keras.Input(shape=(feature_dim,), name="pooled_features")
        if self.config.uses_audience:
            return keras.Model(inputs, self._outputs(inputs), name="warmup_model")
        logits = self.head(self.embedding(self.dropout(self.normalisation(inputs))))
        return keras.Model(inputs, {LOGITS_OUTPUT: logits}, name="warmup_model")

    def _losses(self, labels: np.ndarray, metric: bool) -> tuple[dict, dict]:
        """(losses, weights) per output for the objective (``metric``: the triplet phase)."""
        bce = self._bce(labels)
        genre_weight = self.config.classification_weight
        if self.config.uses_audience:
            embedding_loss = keras.losses.CosineSimilarity(axis=-1)
            if self.config.objective == "audience":
                genre_weight = 1.0
        elif metric:
            embedding_loss = SemiHardTripletLoss(self.config.triplet_margin, "angular")
        else:
            return {LOGITS_OUTPUT: bce}, {LOGITS_OUTPUT: 1.0}
        return (
            {EMBEDDING_OUTPUT: embedding_loss, LOGITS_OUTPUT: bce},
            {EMBEDDING_OUTPUT: 1.0, LOGITS_OUTPUT: genre_weight},
        )

    def _targets(self, data: SplitData, losses: dict, training: str | None = None) -> dict:
        """What each output with a loss is fitted to: the genre labels, or for the embedding
        the co-watch vectors (audience) or the labels (triplet). ``training``: the cached
        inputs trained on, whose flipped copies repeat the targets."""
        labels = data.training_set(training)[1] if training else data.labels
        cowatch = data.training_targets(training) if training else data.targets
        embedding = cowatch if self.config.uses_audience else labels
        every = {EMBEDDING_OUTPUT: embedding, LOGITS_OUTPUT: labels}
        return {name: every[name] for name in losses}

    def extract(
        self,
        batches: Iterable[dict[str, tf.Tensor]],
        keep_images: set[int],
        flip_splits: set[int] = frozenset(),
        targets: dict[int, np.ndarray] | None = None,
    ) -> PosterData:
        """Cache trunk outputs and frozen features of every training poster, split by split.

        A poster is kept when it has a genre of the set or, with ``targets`` (the audience
        objective: movie id -> co-watch vector), when its film has a target. ``keep_images``
        names the splits whose pixels are kept too; for ``flip_splits`` the trunk outputs of
        the horizontally flipped posters are cached as well (augmentation).
        """
        parts: dict[int, dict[str, list[np.ndarray]]] = {}
        unlabelled = dict.fromkeys(range(len(features.SPLITS)), 0)
        for batch in batches:
            labels = batch[features.LABEL_KEY].numpy()
            split = batch[features.SPLIT_KEY].numpy()
            ids = batch[features.MOVIE_ID_KEY].numpy()
            if targets is None:
                keep = labels.sum(axis=1) > 0
            else:
                keep = np.array([int(m) in targets for m in ids], dtype=bool)
            for index in range(len(features.SPLITS)):
                unlabelled[index] += int(np.sum((split == index) & ~keep))
            if not keep.any():
                continue
            images = batch[features.IMAGE_KEY]
            trunk = self._trunk_fn(images)
            pooled = np.asarray(self.frozen_features(trunk), np.float32)
            trunk = np.asarray(trunk, np.float32)
            pixels = np.asarray(self.pixels_model(batch[features.PIXELS_KEY], training=False))
            for index in np.unique(split[keep]):
                rows = keep & (split == index)
                part = parts.setdefault(int(index), {})
                values = {
                    "movie_ids": ids[rows],
                    "labels": labels[rows],
                    "trunk": trunk[rows],
                    "pooled": pooled[rows],
                    "pixels": pixels[rows],
                }
                if targets is not None:
                    values["targets"] = np.stack([targets[int(m)] for m in ids[rows]])
                if int(index) in keep_images:
                    values["images"] = images.numpy()[rows]
                if int(index) in flip_splits:
                    flipped = self._trunk_fn(
                        tf.image.flip_left_right(tf.boolean_mask(images, rows))
                    )
                    values["flipped_pooled"] = np.asarray(self.frozen_features(flipped), np.float32)
                    values["flipped_trunk"] = np.asarray(flipped, np.float32)
                for name, value in values.items():
                    part.setdefault(name, []).append(value)
        splits = {
            index: SplitData(**{name: np.concatenate(chunks) for name, chunks in part.items()})
            for index, part in parts.items()
        }
        return PosterData(splits=splits, unlabelled=unlabelled)

    def warm_up(self, train: SplitData, validation: SplitData) -> None:
        """Phase 1: the embedding layer and head on frozen pooled features (balanced BCE).

        With the ``audience`` objective the phase runs ``warmup_runs`` times from different
        seeds (fresh layers, seed + run) and keeps the mean of their embedding layers: on frozen
        features the embedding is one linear layer after a fixed standardisation, so the mean
        layer outputs the mean of the runs' embeddings (before normalising). One run's cold-start
        figures move by a few hundredths with its seed; the mean is steadier and finds more
        (benchmarks/candidates_real.py). The genre head, a probe under ``audience``, is averaged
        too. ``warmup_members`` keeps each run's embedding (kernel, bias); the history's
        ``warm_up`` holds the first run's epochs and ``warm_up_runs`` each run's summary.
        """
        epochs = self.config.warmup_epochs
        if not epochs:
            return
        members = []
        runs = self.config.averaged_runs
        for run in range(runs):
            if run:
                self._fresh_layers(self.config.seed + run)
            phase = "warm-up" if runs == 1 else f"warm-up run {run + 1}/{runs}"
            history = _epochs(self._warm_up_run(train, validation, self.config.seed + run, phase))
            if not run:
                self.history["warm_up"] = history
            if runs > 1:  # every run in the train report: its epochs and best validation loss
                best = min((e["val_loss"] for e in history if "val_loss" in e), default=None)
                summary = {"run": float(run + 1), "epochs": float(len(history))}
                self.history.setdefault("warm_up_runs", []).append(
                    summary if best is None else {**summary, "best_val_loss": best}
                )
            members.append((self.embedding.get_weights(), self.head.get_weights()))
        self.warmup_members = [tuple(m[0]) for m in members]
        if len(members) > 1:
            _LOG.info("warm-up: mean of %d runs' embedding layers", len(members))
            for layer, which in ((self.embedding, 0), (self.head, 1)):
                weights = [m[which] for m in members]
                layer.set_weights([np.mean([w[i] for w in weights], axis=0) for i in range(2)])

    def _new_layers(self) -> None:
        """New embedding and head layers (initialised when first built), no model built yet."""
        config = self.config
        self.embedding = keras.layers.Dense(
            config.embedding_dim, kernel_regularizer=_l2(config.l2), name=EMBEDDING_OUTPUT
        )
        self.head = keras.layers.Dense(
            self.num_classes, kernel_regularizer=_l2(config.l2), name=LOGITS_OUTPUT
        )
        self._model: keras.Model | None = None

    def _fresh_layers(self, seed: int) -> None:
        """New, freshly initialised embedding and head layers (initialised from ``seed``)."""
        keras.utils.set_random_seed(seed)
        self._new_layers()

    def _warm_up_run(
        self, train: SplitData, validation: SplitData, seed: int, phase: str
    ) -> keras.callbacks.History:
        """One warm-up fit of the current embedding and head layers."""
        epochs = self.config.warmup_epochs
        model = self._warmup_model(train.pooled.shape[1])
        losses, weights = self._losses(train.labels, metric=False)
        model.compile(
            optimizer=keras.optimizers.Adam(self.config.learning_rate),
            loss=losses,
            loss_weights=weights,
        )
        inputs, _ = train.training_set("pooled")
        keras.utils.set_random_seed(seed)
        return model.fit(
            inputs,
            self._targets(train, losses, "pooled"),
            validation_data=(validation.pooled, self._targets(validation, losses)),
            batch_size=self.config.batch_size,
            epochs=epochs,
            shuffle=True,
            verbose=0,
            callbacks=[EpochLog(phase, epochs), self._best_epoch()],
        )

    def metric_learning(self, train: SplitData, validation: SplitData) -> None:
        """Phase 2: triplet + balanced BCE, unfreezing the tail's blocks one stage at a time."""
        config = self.config
        per_stage = epochs_per_stage(config.metric_epochs, len(self.tail_blocks))
        stages = len(per_stage)
        inputs, _ = train.training_set("trunk")
        losses, weights = self._losses(train.labels, metric=True)
        targets = self._targets(train, losses, "trunk")
        val_targets = self._targets(validation, losses)
        self.history["metric"] = []
        for stage, epochs in enumerate(per_stage, start=1):
            if not epochs:
                continue
            names = unfreeze_last(self.tail_blocks, stage if self.tail_blocks else 0)
            _LOG.info("metric learning stage %d/%d: trainable blocks %s", stage, stages, names)
            self.model.compile(
                optimizer=keras.optimizers.Adam(config.fine_tune_learning_rate),
                loss=losses,
                loss_weights=weights,
            )
            keras.utils.set_random_seed(config.seed + stage)
            history = self.model.fit(
                inputs,
                targets,
                validation_data=(validation.trunk, val_targets),
                batch_size=config.batch_size,
                epochs=epochs,
                shuffle=True,
                verbose=0,
                callbacks=[EpochLog(f"metric stage {stage}", epochs), self._best_epoch()],
            )
            self.history["metric"].extend(_epochs(history))
        freeze(self.backbone)

    def _best_epoch(self) -> keras.callbacks.EarlyStopping:
        """Stop when the validation loss stops improving; keep the best epoch's weights."""
        return keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=self.config.patience,
            restore_best_weights=True,
            start_from_epoch=0,
        )

    def _bce(self, labels: np.ndarray) -> BalancedBinaryCrossentropy:
        """The class-balanced cross-entropy for these training labels."""
        positive, negative = balanced_class_weights(labels)
        return BalancedBinaryCrossentropy(positive.tolist(), negative.tolist())

    def genre_scores(self, trunk: np.ndarray) -> np.ndarray:
        """Genre probabilities [n, num_classes] of cached trunk outputs."""
        outputs = self.model.predict(trunk, batch_size=self.config.batch_size, verbose=0)
        return 1.0 / (1.0 + np.exp(-np.asarray(outputs[LOGITS_OUTPUT], np.float64)))

    def centre(self, train: SplitData) -> None:
        """Move the embedding's origin to the training posters' mean, before normalising.

        Genre training leaves every embedding on one side of the origin, so unit vectors of
        unrelated films score 0.96+; subtracting the training mean from the embedding layer's
        bias spreads the cosine scores, and the genre head's bias takes the mean back so that
        its logits do not change.
        """
        x = self.normalisation(tf.constant(train.pooled, tf.float32))
        mean = np.asarray(self.embedding(x), np.float64).mean(axis=0)
        kernel, bias = (np.asarray(w, np.float64) for w in self.embedding.get_weights())
        self.embedding.set_weights([kernel, bias - mean])
        head_kernel, head_bias = (np.asarray(w, np.float64) for w in self.head.get_weights())
        self.head.set_weights([head_kernel, head_bias + mean @ head_kernel])

    def pooled_embeddings(self, pooled: np.ndarray) -> np.ndarray:
        """Unit embeddings of pooled backbone features (the exported model after pooling)."""
        x = self.embedding(self.normalisation(tf.constant(pooled, tf.float32)))
        x = np.asarray(x, np.float64)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def cached_embeddings(self, trunk: np.ndarray) -> np.ndarray:
        """Unit embeddings [n, embedding_dim] of cached trunk outputs."""
        outputs = self.model.predict(trunk, batch_size=self.config.batch_size, verbose=0)
        return np.asarray(outputs[EMBEDDING_OUTPUT], np.float32)

    def export_model(self) -> keras.Model:
        """The embedding model: RGB 0..255 at the input size in, unit float32 vectors out."""
        inputs = keras.Input(shape=(*self.input_size, 3), dtype="float32", name="image")
        x = inputs
        layer = preprocess_layer(self.preprocess)
        if layer is not None:
            x = layer(x)
        x = _pool(self.backbone(x))
        x = self.embedding(self.normalisation(x))
        outputs = L2Normalize(name="l2_normalize", dtype="float32")(x)
        return keras.Model(inputs, outputs, name=f"{EXPORT_PREFIX}_{self.config.backbone}")


def _l2(strength: float) -> keras.regularizers.Regularizer | None:
    """An L2 kernel regulariser, or None for strength 0."""
    return keras.regularizers.L2(strength) if strength else None


def _pool_tensor(x: tf.Tensor) -> tf.Tensor:
    """Global average of feature maps [batch, h, w, c]; vectors pass unchanged."""
    return tf.reduce_mean(x, axis=[1, 2]) if x.shape.rank == 4 else x


def _epochs(history: keras.callbacks.History) -> list[dict[str, float]]:
    """A Keras history as one dict of figures per epoch."""
    names = sorted(history.history)
    count = len(history.history[names[0]]) if names else 0
    return [{name: float(history.history[name][i]) for name in names} for i in range(count)]


def transformed_batches(
    file_pattern: str | list[str],
    feature_spec: dict[str, Any],
    batch_size: int,
    input_size: tuple[int, int],
    pixels_size: tuple[int, int] = pixels.INPUT_SIZE,
) -> tf.data.Dataset:
    """Batches of the transformed TFRecords (files in sorted order) with the posters decoded.

    Each poster's JPEG bytes (``features.IMAGE_BYTES_KEY``) become ``features.IMAGE_KEY`` at
    ``input_size`` and ``features.PIXELS_KEY`` at ``pixels_size``, both by the embed stage's
    :func:`models.image_ops.decode_and_resize`; the bytes themselves are dropped.
    """
    files = (
        sorted(tf.io.gfile.glob(file_pattern)) if isinstance(file_pattern, str) else file_pattern
    )
    if not files:
        raise FileNotFoundError(f"no transformed examples match {file_pattern}")

    def parse_and_decode(record: tf.Tensor) -> dict[str, tf.Tensor]:
        example = tf.io.parse_single_example(record, feature_spec)
        image_bytes = example.pop(features.IMAGE_BYTES_KEY)
        example[features.IMAGE_KEY] = decode_and_resize(image_bytes, input_size)
        example[features.PIXELS_KEY] = decode_and_resize(image_bytes, pixels_size)
        return example

    return (
        tf.data.TFRecordDataset(files)
        .map(parse_and_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(2)
    )


def embed_images(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Unit vectors of [n, h, w, 3] 0..255 images from an exported model."""
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return _batched_predict(fn, images, batch_size)


def neighbour_count(n: int, k: int = 10) -> int:
    """The neighbours per poster that ``n`` posters allow: k, or n - 1 when fewer."""
    if n < 2:
        raise ValueError(f"need at least 2 posters for neighbours, got {n}")
    return min(k, n - 1)


def epochs_per_stage(metric_epochs: int, stages: int) -> list[int]:
    """How the metric-learning epochs are spread over the unfreezing stages."""
    stages = max(1, stages)
    return [
        metric_epochs // stages + (1 if s < metric_epochs % stages else 0) for s in range(stages)
    ]


def genre_classes(transform_output: Any, genre_set: str) -> list[str]:
    """Class names in label-column order: the tf.Transform vocabulary, then absent classes."""
    vocabulary = [
        v.decode("utf-8") if isinstance(v, bytes) else str(v)
        for v in transform_output.vocabulary_by_name(features.GENRE_VOCABULARY)
    ]
    return vocabulary + [c for c in features.class_names(genre_set) if c not in vocabulary]


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two equally shaped arrays."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0


def audience_config(config: TrainConfig, targets: dict[int, np.ndarray] | None) -> TrainConfig:
    """The config for its objective: the audience objectives embed in the co-watch space."""
    if not config.uses_audience:
        return config
    if not targets:
        raise ValueError(
            f"--objective={config.objective} needs co-watch vectors (--cowatch_vectors) of films "
            "in the catalogue"
        )
    dim = len(next(iter(targets.values())))
    return dataclasses.replace(config, embedding_dim=dim)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of paired rows."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.sum(a * b, axis=1))) if len(a) else 0.0


def ridge_probe(
    train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray]
) -> tuple[Any, float]:
    """A linear map features -> targets (closed-form ridge), its strength chosen on validation."""
    x, y = train
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6

    def design(features_: np.ndarray) -> np.ndarray:
        standard = (features_ - mean) / scale
        return np.hstack([standard, np.ones((len(standard), 1))])

    a = design(x)
    best = None
    for strength in (1.0, 10.0, 100.0, 1000.0, 10000.0):
        weights = np.linalg.solve(a.T @ a + strength * np.eye(a.shape[1]), a.T @ y)
        score = mean_cosine(design(validation[0]) @ weights, validation[1])
        if best is None or score > best[0]:
            best = (score, strength, weights)
    _, strength, weights = best
    return (lambda features_: design(features_) @ weights), strength


def audience_report(
    trainer: PosterTrainer, train: SplitData, validation: SplitData, test: SplitData
) -> dict[str, Any]:
    """Test mean cosine to the co-watch vectors: the trained model vs a ridge probe."""
    probe, strength = ridge_probe(
        (train.pooled, train.targets), (validation.pooled, validation.targets)
    )
    trained = mean_cosine(trainer.cached_embeddings(test.trunk), test.targets)
    return {
        "test_films": len(test),
        "trained_mean_cosine": trained,
        "ridge_probe_mean_cosine": mean_cosine(probe(test.pooled), test.targets),
        "ridge_probe_l2": strength,
    }


def score_spread(vectors: np.ndarray, k: int = 10, seed: int = 0) -> dict[str, dict]:
    """Cosine score percentiles (5, 50, 95) of random pairs and of each film's top-k neighbours."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    top = np.sort(sims, axis=1)[:, -k:]
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(unit), size=(2, 20 * len(unit)))
    pairs = sims[a[a != b], b[a != b]]

    def percentiles(values: np.ndarray) -> dict[str, float]:
        return {f"p{p}": float(np.percentile(values, p)) for p in (5, 50, 95)}

    return {"random_pairs": percentiles(pairs), "top_neighbours": percentiles(top.ravel())}


PROBES = (("untrained_backbone", "pooled"), ("pixels", "pixels"))
"""The baselines: (report name, cached feature of a SplitData) probed with balanced logistic
regression."""


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def extract_features(
    trainer: PosterTrainer,
    examples: str | list[str],
    transform_output: tft.TFTransformOutput,
    targets: dict[int, np.ndarray] | None,
) -> PosterData:
    """Every split's cached backbone features from the transformed examples (the test split's
    images kept, the training split's flipped posters too when the config asks)."""
    config = trainer.config
    batches = transformed_batches(
        examples, transform_output.transformed_feature_spec(), config.batch_size, config.input_size
    )
    flips = {features.TRAIN} if config.flip_augment else set()
    return trainer.extract(
        batches, keep_images={features.TEST}, flip_splits=flips,
        targets=targets if config.uses_audience else None,
    )  # fmt: skip


def fit(trainer: PosterTrainer, train: SplitData, validation: SplitData, timings: dict) -> None:
    """Build the model, warm it up on genres, then metric learning (timed into ``timings``)."""
    with _timed(timings, "warm_up"):
        trainer.build(train)
        trainer.warm_up(train, validation)
    with _timed(timings, "metric_learning"):
        trainer.metric_learning(train, validation)
        if trainer.config.objective == "genres":
            trainer.centre(train)


def export_and_check(
    trainer: PosterTrainer, model_path: str, test: SplitData
) -> tuple[np.ndarray, dict]:
    """Save the embedding model to ``model_path`` and reload it; returns the reloaded model's
    test vectors and what the export report says of it (how far its vectors are from the
    model's before the save and from the cached-feature path)."""
    batch_size = trainer.config.batch_size
    exported = trainer.export_model()
    exported.save(model_path)
    reloaded = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    vectors = embed_images(reloaded, test.images, batch_size)
    before_save = embed_images(exported, test.images, batch_size)
    return vectors, {
        "model_name": reloaded.name,
        "input_size": list(trainer.input_size),
        "dim": int(reloaded.output_shape[-1]),
        "reload_max_abs_difference": _max_abs_difference(vectors, before_save),
        "cached_path_max_abs_difference": _max_abs_difference(
            vectors, trainer.cached_embeddings(test.trunk)
        ),
    }


def trained_report(
    trainer: PosterTrainer,
    validation: SplitData,
    test: SplitData,
    classes: list[str],
    vectors: np.ndarray,
    k: int,
) -> tuple[dict, Any]:
    """The trained model's test figures (thresholds chosen on validation, neighbour genre
    agreement and score spread of its ``vectors``) and its test predictions."""
    test_scores = trainer.genre_scores(test.trunk)
    report = evaluation.thresholded_report(
        (validation.labels, trainer.genre_scores(validation.trunk)),
        (test.labels, test_scores),
        classes,
    )
    test_genres = evaluation.label_genres(test.labels, classes)
    report["neighbour_genre_jaccard"] = evaluation.mean_neighbour_genre_jaccard(
        vectors, test_genres, k
    )
    report["score_spread"] = score_spread(vectors, k)
    return report, evaluation.report_predictions(report, test_scores, classes)


def probe_report(
    attribute: str, splits: tuple[SplitData, SplitData, SplitData], classes: list[str], k: int
) -> tuple[dict, Any]:
    """A baseline's test figures and predictions: the best balanced logistic probe on one
    cached feature (``pooled``: the untrained backbone's, or ``pixels``)."""
    train, validation, test = splits
    probe, l2 = evaluation.fit_best_probe(
        (getattr(train, attribute), train.labels),
        (getattr(validation, attribute), validation.labels),
    )
    scores = probe.scores(getattr(test, attribute))
    report = evaluation.thresholded_report(
        (validation.labels, probe.scores(getattr(validation, attribute))),
        (test.labels, scores),
        classes,
    )
    report["probe_l2"] = l2
    report["neighbour_genre_jaccard"] = evaluation.mean_neighbour_genre_jaccard(
        getattr(test, attribute), evaluation.label_genres(test.labels, classes), k
    )
    return report, evaluation.report_predictions(report, scores, classes)


def train_and_evaluate(
    config: TrainConfig,
    examples: str | list[str],
    transform_dir: str,
    model_path: str,
    neighbours: int = 10,
    targets: dict[int, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Train on the transformed examples, save the embedding model, return the evaluation report.

    ``examples`` are the transformed TFRecords (a glob or file list) and ``transform_dir`` the
    tf.Transform output written beside them; ``model_path`` is a local ``.keras`` path;
    ``targets`` (movie id -> co-watch vector) are needed by the audience objectives. The report
    holds the test-split figures of the trained model and of balanced logistic probes on the
    untrained backbone's features and on raw pixels, and for the audience objectives the test
    cosine to the co-watch vectors beside a ridge probe on the untrained backbone's features.
    """
    timings: dict[str, float] = {}
    with _timed(timings, "features"):
        transform_output = tft.TFTransformOutput(transform_dir)
        classes = genre_classes(transform_output, config.genre_set)
        config = audience_config(config, targets)
        trainer = PosterTrainer(config, len(classes))
        data = extract_features(trainer, examples, transform_output, targets)
        train, validation, test = (data.split(i) for i in range(len(features.SPLITS)))
        k = neighbour_count(len(test), neighbours)
    _LOG.info(
        "cached features of %d train, %d validation, %d test posters (%d without a class of %r)",
        len(train), len(validation), len(test), sum(data.unlabelled.values()), config.genre_set,
    )  # fmt: skip
    fit(trainer, train, validation, timings)
    with _timed(timings, "evaluation"):
        vectors, export = export_and_check(trainer, model_path, test)
        trained, predicted = trained_report(trainer, validation, test, classes, vectors, k)
        models, predictions = {"trained": trained}, {"trained": predicted}
        for name, attribute in PROBES:
            models[name], predictions[name] = probe_report(
                attribute, (train, validation, test), classes, k
            )
        trained["micro_f1_minus"] = {
            name: evaluation.paired_bootstrap_micro_f1(
                test.labels, predictions["trained"], predictions[name], seed=config.seed
            )
            for name, _ in PROBES
        }
    audience = audience_report(trainer, train, validation, test) if config.uses_audience else None
    return {
        "objective": config.objective,
        "audience": audience,
        "genre_set": config.genre_set,
        "classes": classes,
        "config": dataclasses.asdict(config),
        "examples": {"train": len(train), "validation": len(validation), "test": len(test)},
        "unlabelled": {name: data.unlabelled[i] for i, name in enumerate(features.SPLITS)},
        "neighbours": k,
        "models": models,
        "history": trainer.history,
        "export": export,
        "seconds": timings,
    }
