"""A quality score for generated digits that never compares a model with its own training images.

The idea is FID (Heusel et al. 2017) shrunk to the 8x8 scikit-learn digits, with the reference
kept apart from the training data:

- **Split.**  :func:`ddpm_check.data.digits_split`: a third of each class (596 images) is held
  out; ``--data digits`` trains on the other 1,201.  The score's reference is the held-out split.
  A model trained on every digit (``--data digits-all``, or a checkpoint older than the split)
  gets no score: :func:`score_refusal` says why.
- **Classifier.**  An ``MLPClassifier`` with one hidden layer of 64 ReLU units (L2 penalty
  alpha = 0.03, Adam, ``random_state=0``, inputs = pixels / 16 in [0, 1]) fitted on the train split;
  about 95 % accurate on the held-out split (mean confidence about 0.89 on real digits, 0.5 on
  uniform noise: the penalty keeps its confidence honest; with alpha = 1.0 Adam stalled at 65 %
  on this split).  Fitting is deterministic and cached in-process.
- **Images** of any size are brought to 8x8 by area averaging and from [-1, 1] to [0, 1]
  (values outside are clipped); the real images pass through the same resize round trip as the
  model's training data (8 -> S -> 8).
- **Frechet distance** between Gaussians fitted to two sets: FD = ||mu1 - mu2||^2 +
  tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}), in two spaces: the classifier's 64 hidden
  features ("FD features", sees shapes the way a digit reader does) and the 64 raw pixels ("FD
  pixels", sees brightness and blur that the features may not).  Every row is scored with the
  *same* number n of images, because the FD estimate grows by about tr(S)/n at small n.

The rows of the table (:class:`DigitsScore`):

- ``samples``: the model's n samples.
- ``real``: real digits from the **train split**, in disjoint subsets of n (three at n = 400):
  the floor, what a perfect generator of the training distribution scores.  Its range over the
  subsets is the *spread*: two FDs that differ by less than it are not told apart.
- ``gaussian``: one Gaussian fitted to the train split's pixels (mean and covariance);
  ``class_gaussians``: ten Gaussians, one per class, drawn in the train split's class
  proportions.  Baselines a learner can place a model between (three draws of n each).
- ``noise``: N(0, I) clipped to [-1, 1], the sampler's starting point x_T (the ceiling; three draws).

Each row also has the classifier's mean confidence (max_k p(k | x)) and the entropy of its
predicted-class histogram in bits (log2 10 = 3.32 for ten equal classes; lower means some
digits are missing: mode collapse).

**Memorisation.**  For every image, its distance to the nearest train-split image (L2 over the
64 pixels in [0, 1]).  The threshold tau is the 10th percentile of that distance over one half
of the held-out split; the statistic is the share of a set's images nearer than tau to a
training image.  The other held-out half gives the real value (about 10 % by construction);
a generator of new digits stays near it, a copy of the training set scores 100 %.

The floor is a reference, not a bound: FD compares only means and covariances, and samples a
little smoother than real digits can come out below it; noise is no bound either (a blank image
set scores worse).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ddpm_check.data import digits_images, digits_labels, resize_images
from ddpm_check.errors import DDPMCheckError

HIDDEN = 64
ALPHA = 0.03
#: how many disjoint real subsets (at most) and baseline / noise draws give a row's spread
N_DRAWS = 3
#: memorisation: tau is this quantile of held-out images' distance to the nearest training image
TAU_QUANTILE = 0.10
#: the fixed permutation of the train split that the real subsets are cut from
REAL_SUBSET_SEED = 1
ROW_LABELS = {"samples": "samples", "real": "train digits (floor)", "gaussian": "one Gaussian",
              "class_gaussians": "10 class Gaussians", "noise": "noise (ceiling)"}
#: the baselines a model is compared with, and the two distances it is compared on
BASELINES = ("gaussian", "class_gaussians")
DISTANCES = ("fd", "fd_pixels")


@dataclass(frozen=True, eq=False)
class DigitClassifier:
    """The MLP fitted on the train split, and its accuracy on the held-out split."""

    clf: object
    held_accuracy: float

    def features(self, x01: np.ndarray) -> np.ndarray:
        """Hidden-layer activations ReLU(x W1 + b1).  x01: [N, 64] in [0, 1] -> [N, 64]."""
        z = x01 @ self.clf.coefs_[0] + self.clf.intercepts_[0]
        return np.maximum(z, 0.0)

    def proba(self, x01: np.ndarray) -> np.ndarray:
        """p(k | x) for the ten classes: [N, 10]."""
        return self.clf.predict_proba(x01)


@functools.cache
def digit_classifier() -> DigitClassifier:
    """Fit (once per process, deterministically) the classifier on the train split of the digits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    def inputs(split):
        x = digits_images(8, split).reshape(-1, 64).double().numpy()
        return (x + 1.0) / 2.0  # x / 16 of the original 0..16 values

    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=ALPHA, max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(inputs("train"), digits_labels("train"))
    acc = float(clf.score(inputs("held-out"), digits_labels("held-out")))
    return DigitClassifier(clf, acc)


def to_classifier_input(images) -> np.ndarray:
    """Grey images [N, 1, S, S] (or [N, S, S]) in [-1, 1] -> [N, 64] float64 in [0, 1] at 8x8."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.detach().to("cpu", torch.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] != x.shape[-2]:
        raise DDPMCheckError(
            f"the digits metric needs grey square images [N, 1, S, S], got shape {tuple(x.shape)}"
        )
    if x.shape[-1] % 8 != 0:
        raise DDPMCheckError(f"the digits metric needs an image size that is a multiple of 8, got {x.shape[-1]}")
    finite = torch.isfinite(x).flatten(1).all(dim=1)  # [N]
    if not finite.all():
        raise DDPMCheckError(
            f"{int((~finite).sum()):,} of {len(x):,} images contain NaN or inf, so they cannot be scored "
            f"(samples like these come from diverged weights, e.g. a learning rate too high, or an extreme schedule)"
        )
    x8 = resize_images(x.clamp(-1.0, 1.0), 8)  # [N, 1, 8, 8]
    return ((x8.reshape(len(x8), 64).numpy() + 1.0) / 2.0).clip(0.0, 1.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix (eigenvalues below 0 from round-off are 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between Gaussians fitted to two feature sets [N_i, D].

    FD = ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^{1/2} S2 S1^{1/2})^{1/2}; the matrix square
    roots are taken through symmetric eigendecompositions (no complex round-off).
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise DDPMCheckError(f"feature sets need shapes [N>=2, D] alike, got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(fd, 0.0)


def nearest_distances(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """For each row of ``x`` [N, D], the L2 distance to its nearest row of ``ref`` [M, D]: [N]."""
    a, b = torch.as_tensor(np.asarray(x, np.float64)), torch.as_tensor(np.asarray(ref, np.float64))
    return torch.cdist(a, b).min(dim=1).values.numpy()


def class_entropy(proba: np.ndarray) -> float:
    """Entropy in bits of the histogram of predicted classes (argmax of ``proba`` [N, 10])."""
    counts = np.bincount(proba.argmax(axis=1), minlength=proba.shape[1])
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


@dataclass(frozen=True)
class _Gaussian:
    """N(mean, C) in the 64-pixel [0, 1] space, drawn as mean + z R with R R^T = C."""

    mean: np.ndarray
    root: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "_Gaussian":
        return cls(x.mean(0), _psd_sqrt(np.cov(x, rowvar=False)))  # some pixels never vary: rank-deficient

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.mean + rng.standard_normal((n, len(self.mean))) @ self.root


@dataclass(frozen=True, eq=False)
class DigitsReference:
    """The real images at one model image size, all [N, 64] in [0, 1] (after the 8 -> S -> 8 trip)."""

    image_size: int
    train: np.ndarray  # the train split (what the model trained on)
    held: np.ndarray  # the held-out split: the FD reference
    held_features: np.ndarray
    train_labels: np.ndarray
    tau: float  # memorisation threshold, from the first half of the held-out split
    held_check: np.ndarray  # the second half: the real memorisation value
    gaussian: _Gaussian
    class_gaussians: tuple[_Gaussian, ...]

    def draw_baseline(self, name: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """n images of a Gaussian baseline fitted to the train split, clipped to [0, 1]."""
        if name == "gaussian":
            x = self.gaussian.draw(n, rng)
        else:  # ten class Gaussians, the class drawn in the train split's proportions
            props = np.bincount(self.train_labels, minlength=10) / len(self.train_labels)
            ks = rng.choice(10, size=n, p=props)
            x = np.empty((n, 64))
            for k in range(10):
                sel = ks == k
                x[sel] = self.class_gaussians[k].draw(int(sel.sum()), rng)
        return x.clip(0.0, 1.0)

    def memorised(self, x: np.ndarray) -> float:
        """Share of the images ``x`` [N, 64] nearer to a training image than tau."""
        return float((nearest_distances(x, self.train) < self.tau).mean())


@functools.cache
def digits_reference(image_size: int = 8) -> DigitsReference:
    """The split's images and baselines at ``image_size`` (cached per size)."""
    c = digit_classifier()
    train = to_classifier_input(digits_images(image_size, "train"))
    held = to_classifier_input(digits_images(image_size, "held-out"))
    labels = digits_labels("train")
    half = len(held) // 2  # the held-out order is sorted by sklearn index, not by class
    order = np.random.default_rng(REAL_SUBSET_SEED).permutation(len(held))
    tau_part, check_part = held[order[:half]], held[order[half:]]
    tau = float(np.quantile(nearest_distances(tau_part, train), TAU_QUANTILE))
    return DigitsReference(
        image_size=image_size, train=train, held=held, held_features=c.features(held), train_labels=labels,
        tau=tau, held_check=check_part, gaussian=_Gaussian.fit(train),
        class_gaussians=tuple(_Gaussian.fit(train[labels == k]) for k in range(10)),
    )


@dataclass(frozen=True)
class RowScore:
    """One row of the table: each number the mean over the row's draws, with its (min, max)."""

    fd: float
    fd_pixels: float
    confidence: float
    entropy: float
    memorised: float | None  # None for the training images themselves
    draws: int
    n: int
    fd_range: tuple[float, float] | None = None
    fd_pixels_range: tuple[float, float] | None = None

    @property
    def fd_spread(self) -> float | None:
        return None if self.fd_range is None else self.fd_range[1] - self.fd_range[0]

    @property
    def fd_pixels_spread(self) -> float | None:
        return None if self.fd_pixels_range is None else self.fd_pixels_range[1] - self.fd_pixels_range[0]

    def to_dict(self) -> dict:
        return {"fd": self.fd, "fd_range": self.fd_range, "fd_pixels": self.fd_pixels,
                "fd_pixels_range": self.fd_pixels_range, "confidence": self.confidence,
                "class_entropy_bits": self.entropy, "memorised": self.memorised, "draws": self.draws, "n": self.n}


def _row(sets: list[np.ndarray], ref: DigitsReference, memorised: bool = True) -> RowScore:
    c = digit_classifier()
    fd = [frechet_distance(c.features(x), ref.held_features) for x in sets]
    fdp = [frechet_distance(x, ref.held) for x in sets]
    proba = [c.proba(x) for x in sets]
    rng_of = (lambda v: (min(v), max(v))) if len(sets) > 1 else (lambda v: None)
    return RowScore(
        fd=float(np.mean(fd)), fd_pixels=float(np.mean(fdp)),
        confidence=float(np.mean([p.max(axis=1).mean() for p in proba])),
        entropy=float(np.mean([class_entropy(p) for p in proba])),
        memorised=float(np.mean([ref.memorised(x) for x in sets])) if memorised else None,
        draws=len(sets), n=len(sets[0]), fd_range=rng_of(fd), fd_pixels_range=rng_of(fdp),
    )


@dataclass(frozen=True)
class DigitsScore:
    """The digits score of n samples: one :class:`RowScore` per row of ``ROW_LABELS``."""

    n: int
    image_size: int
    rows: dict[str, RowScore]
    memorised_real: float  # the held-out check half's share nearer than tau (about TAU_QUANTILE)
    tau: float
    classifier_accuracy: float
    train_size: int
    held_out_size: int
    seed: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def fd_samples(self) -> float:
        return self.rows["samples"].fd

    @property
    def fd_floor(self) -> float:
        return self.rows["real"].fd

    @property
    def fd_ceiling(self) -> float:
        return self.rows["noise"].fd

    @property
    def relative(self) -> float | None:
        """(FD - floor) / (ceiling - floor) in the features: 0 = as good as real digits, 1 = as bad as noise.

        None where the noise ceiling is not above the real-digit floor: then the scale has no
        length (it happens for very small n, where every FD is mostly its small-sample bias).
        """
        span = self.fd_ceiling - self.fd_floor
        if not span > 0:
            return None
        return (self.fd_samples - self.fd_floor) / span

    def versus(self, baseline: str, distance: str) -> dict:
        """The samples against a baseline row on one distance ("fd" or "fd_pixels").

        ``margin`` = baseline - samples (positive: the samples are nearer the held-out digits);
        ``spread`` = the range of the real rows' values over their disjoint subsets.  The verdict
        is "better" or "worse" only where |margin| exceeds the spread, else "within the spread";
        with a single real subset (n above half the train split) there is no spread and no verdict.
        """
        s, b, real = self.rows["samples"], self.rows[baseline], self.rows["real"]
        margin = getattr(b, distance) - getattr(s, distance)
        spread = real.fd_spread if distance == "fd" else real.fd_pixels_spread
        if spread is None:
            verdict = "no spread (one real subset)"
        elif abs(margin) <= spread:
            verdict = "within the spread"
        else:
            verdict = "better" if margin > 0 else "worse"
        return {"margin": margin, "spread": spread, "verdict": verdict}

    def to_dict(self) -> dict:
        return {
            "n": self.n, "image_size": self.image_size, "seed": self.seed,
            "fd_samples": self.fd_samples, "fd_floor": self.fd_floor, "fd_ceiling": self.fd_ceiling,
            "relative": self.relative,
            "rows": {k: r.to_dict() for k, r in self.rows.items()},
            "versus": {b: {d: self.versus(b, d) for d in DISTANCES} for b in BASELINES},
            "memorised": self.rows["samples"].memorised, "memorised_real": self.memorised_real, "tau": self.tau,
            "classifier_accuracy": self.classifier_accuracy, "train_size": self.train_size,
            "held_out_size": self.held_out_size, "reference": "held-out split", "notes": list(self.notes),
        }


def score_refusal(data_cfg) -> str | None:
    """Why a model trained on ``data_cfg`` gets no digits score, or None if it can be scored honestly."""
    if data_cfg.kind != "digits":
        return f"the quality score is for models trained on the digits; this one was trained on {data_cfg.label!r}"
    if data_cfg.split != "train":
        return ("no honest quality score: the model was trained on all 1,797 digits, the held-out split the score "
                "compares with included (train with --data digits to train on the train split)")
    return None


def evaluate_digits(samples, seed: int = 0) -> DigitsScore:
    """Score generated digits ``samples`` [N, 1, S, S] in [-1, 1] against the held-out split.

    The caller makes sure the model behind ``samples`` did not train on the held-out split
    (:func:`score_refusal`).  The real rows use up to ``N_DRAWS`` disjoint subsets of n train-split
    images (fewer where they do not fit; all 1,201 when n is larger, with a note); the baselines
    and noise ``N_DRAWS`` draws of n from ``seed``.
    """
    x = to_classifier_input(samples)
    n = len(x)
    if n < 2:
        raise DDPMCheckError(f"the digits metric needs at least 2 samples, got {n}")
    size = int(torch.as_tensor(samples).shape[-1]) if isinstance(samples, torch.Tensor) else int(np.shape(samples)[-1])
    ref = digits_reference(size)
    notes = []
    perm = np.random.default_rng(REAL_SUBSET_SEED).permutation(len(ref.train))
    k = min(N_DRAWS, len(ref.train) // n)
    if k == 0:
        real_sets = [ref.train]
        notes.append(f"n = {n} is above the {len(ref.train):,} train-split digits: the floor uses all of them")
    else:
        real_sets = [ref.train[perm[i * n:(i + 1) * n]] for i in range(k)]
        if k == 1:
            notes.append(f"n = {n} leaves room for one real subset only: no spread, so no verdict on differences")
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    noise = [to_classifier_input(torch.randn(n, 1, size, size, generator=g, dtype=torch.float64).clamp(-1.0, 1.0))
             for _ in range(N_DRAWS)]
    rows = {
        "samples": _row([x], ref),
        "real": _row(real_sets, ref, memorised=False),
        **{b: _row([ref.draw_baseline(b, n, rng) for _ in range(N_DRAWS)], ref) for b in BASELINES},
        "noise": _row(noise, ref),
    }
    if n < HIDDEN:
        notes.append(f"n = {n} is below the {HIDDEN} features: every FD here is rough (use 400 or more)")
    return DigitsScore(
        n=n, image_size=size, rows=rows, memorised_real=ref.memorised(ref.held_check), tau=ref.tau,
        classifier_accuracy=digit_classifier().held_accuracy, train_size=len(ref.train),
        held_out_size=len(ref.held), seed=seed, notes=tuple(notes),
    )


def entropy_max_bits() -> float:
    """log2 10: the entropy of ten equally frequent classes."""
    return math.log2(10)
