"""A quality score for generated digits: a Frechet distance in a small classifier's feature space.

The idea is FID (Heusel et al. 2017) shrunk to the 8x8 scikit-learn digits:

- **Classifier.**  The 1,797 digits are split once by a fixed permutation (numpy seed 0) into a
  half A (899 images) and a half B (898).  An ``MLPClassifier`` with one hidden layer of 64 ReLU
  units (L2 penalty alpha = 1.0, Adam, ``random_state=0``, inputs = pixels / 16 in [0, 1]) is
  fitted on A; it scores about 97 % on B.  The strong penalty keeps its confidence honest (about
  0.89 on real digits, about 0.5 on noise) and its hidden layer smooth.  Fitting is
  deterministic and cached in-process (``functools.cache``).
- **Features.**  The 64 hidden-layer activations ReLU(W1 x + b1).  Images of any size are first
  brought to 8x8 by area averaging and from [-1, 1] to [0, 1] (values outside are clipped).
- **Distance.**  Fit a Gaussian to each feature set; FD = ||mu1 - mu2||^2 +
  tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).  The reference set is half A, passed through the
  same resize round trip the model's training data went through (8 -> S -> 8).

Reported beside the FD of the samples (all with the *same* number n of images, because the FD
estimate is biased upwards by about tr(S)/n for small n):

- ``fd_floor``: half B against half A -- what a perfect generator would score;
- ``fd_ceiling``: Gaussian noise N(0, I) clipped to [-1, 1] (the sampler's starting point x_T);
- ``confidence``: the classifier's mean max-probability on the samples (beside real B and noise).

The floor is a reference, not a bound: samples can score below it (FD compares only means and
covariances, and a model's samples are a little smoother than real digits), and the ceiling is
no bound either (a blank or dimmed image set scores worse than noise).  ``train --small``
reaches FD 0.15 against a floor of 0.25 and a ceiling of 4.26 (n = 400); its samples are
farther from their nearest training digit than held-out digits are, so this is not memorisation.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ddpm_check.data import _digits_8x8, digits_images, resize_images
from ddpm_check.errors import DDPMCheckError

SPLIT_SEED = 0
HIDDEN = 64
ALPHA = 1.0


@dataclass(frozen=True, eq=False)
class DigitClassifier:
    """The fitted MLP and the split: ``ref_idx`` (half A, fitted on) and ``held_idx`` (half B)."""

    clf: object
    ref_idx: np.ndarray
    held_idx: np.ndarray
    held_accuracy: float

    def features(self, x01: np.ndarray) -> np.ndarray:
        """Hidden-layer activations ReLU(x W1 + b1).  x01: [N, 64] in [0, 1] -> [N, 64]."""
        z = x01 @ self.clf.coefs_[0] + self.clf.intercepts_[0]
        return np.maximum(z, 0.0)

    def confidence(self, x01: np.ndarray) -> float:
        """Mean over images of max_k p(k | x)."""
        return float(self.clf.predict_proba(x01).max(axis=1).mean())


@functools.cache
def digit_classifier() -> DigitClassifier:
    """Fit (once per process, deterministically) the classifier on half A of the digits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    images, labels = _digits_8x8()
    x = images.reshape(len(images), -1).astype(np.float64) / 16.0  # [1797, 64] in [0, 1]
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    half = (len(x) + 1) // 2
    ref_idx, held_idx = np.sort(perm[:half]), np.sort(perm[half:])
    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=ALPHA, max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x[ref_idx], labels[ref_idx])
    acc = float(clf.score(x[held_idx], labels[held_idx]))
    return DigitClassifier(clf, ref_idx, held_idx, acc)


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
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^{1/2}
    m = r1 @ s2 @ r1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(fd, 0.0)


@functools.cache
def _real_inputs(image_size: int) -> np.ndarray:
    """All digits after the training data's resize round trip 8 -> S -> 8, [1797, 64] in [0, 1]."""
    return to_classifier_input(digits_images(image_size))


@dataclass(frozen=True)
class DigitsScore:
    """Frechet distances (lower is better) and confidences, all with n images."""

    n: int
    image_size: int
    fd_samples: float
    fd_floor: float
    fd_ceiling: float
    confidence: float
    confidence_real: float
    confidence_noise: float
    classifier_accuracy: float
    n_floor: int

    @property
    def relative(self) -> float | None:
        """(FD - floor) / (ceiling - floor): 0 = as good as real digits, 1 = as bad as noise.

        None where the noise ceiling is not above the real-digit floor: then the scale has no
        length (it happens for very small n, where every FD is mostly its small-sample bias).
        """
        span = self.fd_ceiling - self.fd_floor
        if not span > 0:
            return None
        return (self.fd_samples - self.fd_floor) / span

    def to_dict(self) -> dict:
        d = asdict(self)
        d["relative"] = self.relative
        return d


def evaluate_digits(samples, seed: int = 0) -> DigitsScore:
    """Score generated digits ``samples`` [N, 1, S, S] in [-1, 1] (see the module docstring).

    The floor uses the first n images of half B (all 898 if n is larger), the ceiling n noise
    images of the samples' size drawn from ``seed``.
    """
    x = to_classifier_input(samples)
    n = len(x)
    if n < 2:
        raise DDPMCheckError(f"the digits metric needs at least 2 samples, got {n}")
    size = int(torch.as_tensor(samples).shape[-1]) if isinstance(samples, torch.Tensor) else int(np.shape(samples)[-1])
    c = digit_classifier()
    real = _real_inputs(size)
    ref_f = c.features(real[c.ref_idx])
    held = real[c.held_idx][:n]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, size, size, generator=g, dtype=torch.float64).clamp(-1.0, 1.0)
    noise_x = to_classifier_input(noise)
    return DigitsScore(
        n=n,
        image_size=size,
        fd_samples=frechet_distance(c.features(x), ref_f),
        fd_floor=frechet_distance(c.features(held), ref_f),
        fd_ceiling=frechet_distance(c.features(noise_x), ref_f),
        confidence=c.confidence(x),
        confidence_real=c.confidence(held),
        confidence_noise=c.confidence(noise_x),
        classifier_accuracy=c.held_accuracy,
        n_floor=len(held),
    )
