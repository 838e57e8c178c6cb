"""Training data, all offline: the scikit-learn digits, a folder of images, a Gaussian mixture.

Every data set is an in-memory image tensor ``[N, C, H, W]`` with values in [-1, 1] (the scale
the DDPM forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) assumes,
Ho et al. 2020 section 3.3).  Batches are drawn *with replacement* by index from a
``torch.Generator``, so the whole data stream is fixed by the generator's state: saving that
state (a uint8 tensor) is enough to resume a run bit for bit.

Kinds (``DataConfig.kind``):

- ``digits``  -- sklearn.datasets.load_digits: 1,797 8x8 grey images with values 0..16, scaled
  to [-1, 1] by x / 8 - 1; optionally upsampled (bilinear) to 16, 32, ... pixels.  The default.
  Split once, stratified by class, into a **train split** of 1,201 images (what ``--data digits``
  trains on) and a **held-out split** of 596 (a third of each class, never trained on: the
  reference of the quality score in :mod:`ddpm_check.metrics`); see :func:`digits_split`.
  ``--data digits-all`` (``split="all"``) trains on all 1,797, and then no score is computed.
- ``folder``  -- PNG / JPEG / BMP / WebP files under a directory (recursively), read with Pillow,
  the shorter side resized to the model size and the centre cropped (as torchvision's
  Resize + CenterCrop), random horizontal flips at batch time (as the source's
  RandomHorizontalFlip).  Stored as uint8 to keep, say, Stanford Cars at 64x64 in ~200 MB.
- ``mixture`` -- draws from :func:`ddpm_check.mixture.image_mixture`, a Gaussian mixture of
  smooth template images whose exact noise predictor E[eps | x_t] is known in closed form.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_check.errors import DDPMCheckError

KINDS = ("digits", "folder", "mixture")
DIGITS_SPLITS = ("train", "all")
#: the digits split: a third of each class held out, chosen by a permutation from this seed
DIGITS_SPLIT_SEED = 0
HELD_OUT_DIVISOR = 3  # floor(n_c / 3) of each class c is held out
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class DataConfig:
    """What to train on.  Saved as JSON in every checkpoint.

    Attributes:
        kind: "digits" | "folder" | "mixture".
        image_size: side H = W of the images the model sees.
        channels: C (digits and the default mixture: 1; a folder: 1 = grey or 3 = RGB).
        path: the image folder (kind "folder" only).
        n: number of images drawn once for "mixture" (ignored otherwise).
        n_components, std, seed: the mixture's parameters (see ``image_mixture``).
        flip: random horizontal flips at batch time, for folders only (default on; a flipped
            digit is not a digit, and a flipped mixture draw is not a draw of the mixture).
        split: digits only: "train" (the train split, the default) or "all" (every digit, the
            held-out split included).  A digits checkpoint written before the split existed has
            no such key and reads as "all": it trained on every digit.
    """

    kind: str = "digits"
    image_size: int = 8
    channels: int = 1
    path: str | None = None
    n: int = 2048
    n_components: int = 4
    std: float = 0.1
    seed: int = 0
    flip: bool | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DDPMCheckError(f"unknown data kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise DDPMCheckError(f"image size must be a positive integer, got {self.image_size!r}")
        if self.kind == "digits":
            if self.channels != 1:
                raise DDPMCheckError(f"the digits are grey: channels must be 1, got {self.channels}")
            if self.image_size % 8 != 0:
                raise DDPMCheckError(
                    f"digits image size must be a multiple of 8 (8, 16, 32, ...), got {self.image_size}"
                )
            if self.split is None:
                object.__setattr__(self, "split", "train")
            if self.split not in DIGITS_SPLITS:
                raise DDPMCheckError(f"unknown digits split {self.split!r}; allowed: {', '.join(DIGITS_SPLITS)}")
        elif self.split is not None:
            raise DDPMCheckError(f"a split belongs to the digits only, not to data kind {self.kind!r}")
        if self.flip and self.kind != "folder":
            raise DDPMCheckError(f"--flip (random left-right flips) is for a folder of images only, not for "
                                 f"--data {self.kind} "
                                 f"(a flipped digit is not a digit; a flipped mixture draw is not one of its draws)")
        if self.kind == "folder":
            if self.path is None:
                raise DDPMCheckError("data kind 'folder' needs a path")
            if self.channels not in (1, 3):
                raise DDPMCheckError(f"folder images have 1 (grey) or 3 (RGB) channels, got {self.channels}")
        if self.kind == "mixture":
            if self.channels not in (1, 3):  # the samples are drawn as grey or RGB pictures
                raise DDPMCheckError(f"mixture images have 1 (grey) or 3 (RGB) channels, got {self.channels}")
            if self.n < 1:
                raise DDPMCheckError(f"mixture data size n must be >= 1, got {self.n}")

    @property
    def use_flip(self) -> bool:
        return self.kind == "folder" if self.flip is None else bool(self.flip)

    @property
    def label(self) -> str:
        """How ``--data`` names this data: digits, digits-all, mixture or the folder."""
        if self.kind == "digits":
            return "digits-all" if self.split == "all" else "digits"
        return self.path if self.kind == "folder" else self.kind

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        if not isinstance(d, dict):
            raise DDPMCheckError(f"data config must be a JSON object, got {type(d).__name__}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if known.get("kind", "digits") == "digits" and "split" not in known:
            known["split"] = "all"  # written before the split existed: it trained on every digit
        return cls(**known)

    @classmethod
    def parse(cls, spec: str, image_size: int, channels: int | None = None, **kw) -> "DataConfig":
        """``spec`` is "digits", "digits-all", "mixture" or a folder path (as the CLI's ``--data``)."""
        if spec in ("digits", "digits-all"):
            return cls(kind="digits", image_size=image_size, channels=channels or 1,
                       split="all" if spec == "digits-all" else "train", **kw)
        if spec == "mixture":
            return cls(kind=spec, image_size=image_size, channels=channels or 1, **kw)
        p = Path(spec).expanduser()
        if not p.exists():
            raise DDPMCheckError(
                f"--data {spec!r}: not 'digits', 'digits-all', 'mixture' or an existing folder of images"
            )
        if not p.is_dir():
            raise DDPMCheckError(f"--data {spec!r} is a file; give a folder of images")
        return cls(kind="folder", image_size=image_size, channels=channels or 3, path=str(p), **kw)


class ImageData:
    """An in-memory image set with a batch sampler.

    ``images`` is ``[N, C, H, W]``: float32 in [-1, 1], or uint8 0..255 for folders (converted
    per batch).  ``batch(batch_size, generator)`` returns float32 ``[B, C, H, W]`` in [-1, 1].
    """

    def __init__(self, images: torch.Tensor, config: DataConfig, mixture=None, files=None) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise DDPMCheckError(f"no images in data set {config.kind!r}")
        self.images = images
        self.config = config
        self.mixture = mixture
        self.files = files

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.to(torch.float32) / 127.5 - 1.0
        return x

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``batch_size`` images uniformly with replacement (x_0 ~ q(x_0), Algorithm 1 line 2)."""
        idx = torch.randint(len(self), (batch_size,), generator=generator)  # [B]
        x = self._to_float(self.images[idx])  # [B, C, H, W]
        if self.config.use_flip:
            flip = torch.rand(batch_size, generator=generator) < 0.5  # [B]
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def all(self) -> torch.Tensor:
        """All images as float32 [N, C, H, W] in [-1, 1]."""
        return self._to_float(self.images)


# ---- digits ---------------------------------------------------------------------------------
@functools.cache
def _digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)  # [1797, 8, 8] in 0..16, [1797]


def digits_labels(split: str = "all") -> np.ndarray:
    """The class (0..9) of each digit, in the order of :func:`digits_images` with the same ``split``."""
    labels = _digits_8x8()[1]
    idx = _split_indices(split)
    return labels.copy() if idx is None else labels[idx]


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bring ``[N, C, h, w]`` images to ``size``: bilinear up, area (mean) down."""
    if x.shape[-1] == size:
        return x
    import torch.nn.functional as F

    if size > x.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return F.interpolate(x, size=(size, size), mode="area")


@functools.cache
def _digits_split() -> tuple[np.ndarray, np.ndarray]:
    labels = _digits_8x8()[1]
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    held = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        held.append(rng.permutation(idx)[: len(idx) // HELD_OUT_DIVISOR])
    held_idx = np.sort(np.concatenate(held))
    train_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return train_idx, held_idx


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """The fixed split of the 1,797 digits: (train indices, held-out indices), both sorted.

    Stratified by class: from each class c, floor(n_c / 3) images chosen by a permutation from
    ``DIGITS_SPLIT_SEED`` are held out (596 in all) and the rest form the train split (1,201, so
    three disjoint subsets of the default 400 samples fit in it).
    ``--data digits`` trains on the train split; the quality score compares samples with the
    held-out split, so it never compares a model with images it trained on.
    """
    train_idx, held_idx = _digits_split()
    return train_idx.copy(), held_idx.copy()


def _split_indices(split: str) -> np.ndarray | None:
    """The indices of ``split`` ("train" or "held-out"), None for "all"; any other name refused."""
    if split == "all":
        return None
    if split not in ("train", "held-out"):
        raise DDPMCheckError(f"unknown digits split {split!r}; allowed: all, train, held-out")
    return _digits_split()[0 if split == "train" else 1]


def digits_images(image_size: int = 8, split: str = "all") -> torch.Tensor:
    """The scikit-learn digits as float32 ``[N, 1, S, S]`` in [-1, 1] (x / 8 - 1).

    ``split``: "all" (1,797 images, in sklearn's order), "train" (1,201) or "held-out" (596),
    in the order of :func:`digits_split`'s indices."""
    if image_size < 1 or image_size % 8 != 0:
        raise DDPMCheckError(f"digits image size must be a multiple of 8, got {image_size}")
    idx = _split_indices(split)
    x = _digits_8x8()[0] if idx is None else _digits_8x8()[0][idx]
    x = torch.from_numpy(x / 8.0 - 1.0)[:, None]  # [N, 1, 8, 8]
    return resize_images(x, image_size).clamp(-1.0, 1.0).contiguous()


# ---- a folder of images ------------------------------------------------------------------------
def _load_one(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DDPMCheckError(f"cannot read image {str(path)!r}: {exc}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise DDPMCheckError(f"image {str(path)!r} is empty ({w}x{h})")
    # Resize the shorter side to `size`, then crop the centre size x size.
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return a.transpose(2, 0, 1)  # [C, size, size]


def list_image_files(folder: str | Path) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DDPMCheckError(f"image folder {str(root)!r} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DDPMCheckError(
            f"image folder {str(root)!r} has no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def folder_images(folder: str | Path, image_size: int, channels: int = 3) -> tuple[torch.Tensor, list[Path]]:
    """Every image under ``folder`` as uint8 ``[N, C, S, S]``; a corrupt file raises, naming it."""
    files = list_image_files(folder)
    arrays = [_load_one(p, image_size, channels) for p in files]
    return torch.from_numpy(np.stack(arrays)), files


# ---- the dispatcher ---------------------------------------------------------------------------
def load_data(config: DataConfig) -> ImageData:
    """Build the in-memory data set described by ``config``."""
    if config.kind == "digits":
        return ImageData(digits_images(config.image_size, config.split), config)
    if config.kind == "folder":
        images, files = folder_images(config.path, config.image_size, config.channels)
        return ImageData(images, config, files=files)
    from ddpm_check.mixture import image_mixture

    mix = image_mixture(channels=config.channels, size=config.image_size,
                        n_components=config.n_components, std=config.std, seed=config.seed)
    g = torch.Generator().manual_seed(config.seed)
    x = mix.sample(config.n, generator=g, dtype=torch.float32)  # [n, D]
    x = x.reshape(config.n, config.channels, config.image_size, config.image_size)
    return ImageData(x.contiguous(), config, mixture=mix)
