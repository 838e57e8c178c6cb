"""Checkpoints that are safe to load from an untrusted source.

One file, ``checkpoint.safetensors``:

- **tensors** (safetensors: a JSON header and raw little-endian buffers, no code): the model's
  and the EMA model's ``state_dict`` (``model/...``, ``ema/...``), Adam's per-parameter state
  (``optim/<i>/exp_avg``, ``exp_avg_sq``, ``step``), the random generators' states
  (``rng/<name>``, the uint8 tensors of ``torch.Generator.get_state()``) and the loss history
  (``loss_history``, float64 [step]);
- **metadata** (the safetensors header's string map): key ``ddpm_check`` holds the run's
  configuration as JSON -- schedule (``ScheduleConfig.to_dict``), model (``UNetConfig.to_dict``),
  data, training settings, step, seed, device type.

A copy of that JSON is written beside the file as ``config.json`` for people to read; loading
uses only the safetensors file.  Both are written atomically (a temporary file in the same
folder, fsync, ``os.replace``), so an interrupted save leaves the previous checkpoint intact.

Nothing here ever unpickles: ``torch.load`` is not called, and a pickle or a ``torch.save``
zip archive is refused with a :class:`DDPMCheckError` before any parsing.

The JSON is not trusted either.  Before a model, a schedule or a batch is built from it,
:func:`check_limits` bounds the sizes that no tensor pins down (T, image size, widths, depth,
batch size, mixture size) and :func:`check_weights` compares the stored weights' shapes with
those of the SimpleUnet the configuration describes (built on the ``meta`` device, which
allocates nothing): a corrupt or crafted file fails with one line naming the value and the file
instead of allocating terabytes or sampling for days.  ``Trainer`` applies the same limits to
new runs, so every checkpoint ddpm-check writes loads again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ddpm_check.errors import DDPMCheckError, first_line
from ddpm_check.schedules import MAX_T  # diffusion steps: the schedules' own limit

FORMAT = "ddpm-check/checkpoint-1"
FILENAME = "checkpoint.safetensors"
META_KEY = "ddpm_check"

# Sizes a configuration may have (checkpoints and new runs alike).  Far beyond any run this
# toolkit is for (the source trains 64x64 images, T = 300, widths up to 1024), yet small enough
# that a crafted number cannot ask for terabytes or 10**9 sampling steps.  The widths are pinned
# further by the stored tensors (check_weights); MAX_WIDTH only keeps the meta-device model sane.
MAX_IMAGE_SIZE = 1024  # pixels per side
MAX_DEPTH = 10  # len(down_channels) - 1; the image side is a multiple of 2**depth
MAX_WIDTH = 65_536  # image channels, each of down_channels, time_emb_dim
MAX_BATCH = 1 << 20  # images per training step
MAX_MIXTURE_N = 1_000_000  # images drawn for the "mixture" data
MAX_MIXTURE_COMPONENTS = 10_000


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding ``checkpoint.safetensors``."""
    p = Path(path).expanduser()
    if p.is_dir():
        f = p / FILENAME
        if not f.is_file():
            raise DDPMCheckError(f"folder {str(p)!r} has no {FILENAME}")
        return f
    if not p.exists():
        raise DDPMCheckError(f"checkpoint {str(p)!r} does not exist")
    return p


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder (fsync, rename), so
    an interrupted or failed write leaves the previous file whole.  A failure names ``path`` and
    its folder, never the temporary file; a full disk also says how much space was needed."""
    import errno

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DDPMCheckError(f"no space left on the device to write {path.name} ({len(data):,} bytes) in folder "
                                 f"{str(path.parent)!r}; free some space or choose another --out") from None
        raise DDPMCheckError(f"cannot write {path.name} in folder {str(path.parent)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` and the JSON ``meta`` atomically to ``path`` (and ``config.json`` beside it)."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":  # anything else, load() refuses (a .pt name reads as a pickle)
        raise DDPMCheckError(f"a checkpoint file name must end in .safetensors, got {str(path)!r}")
    if path.is_dir():
        raise DDPMCheckError(f"{str(path)!r} is a folder; name the checkpoint file, e.g. {str(path / FILENAME)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **meta}
    text = json.dumps(meta, indent=2, sort_keys=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write_bytes(path, save(flat, metadata={META_KEY: text}))
    _atomic_write_bytes(path.with_name("config.json"), (text + "\n").encode())
    return path


#: names of files torch.save / pickle writes: refused before reading (``save`` refuses them too)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")
MAX_HEADER = 100_000_000  # bytes of safetensors JSON header: far above any real one


def _pickle_refusal(path: Path) -> DDPMCheckError:
    return DDPMCheckError(
        f"checkpoint {str(path)!r} looks like a pickle (torch.save / .pt) file: refused, because "
        f"unpickling can run code; ddpm-check reads only its own .safetensors checkpoints"
    )


def _looks_like_pickle(head: bytes) -> bool:
    """A raw pickle (protocol >= 2 starts with the PROTO opcode 0x80 and the protocol number) or
    the zip archive torch.save writes around one ("PK\x03\x04").  Asked only of a file that is
    not a safetensors file: 0x80 is also the first byte of every safetensors file whose header
    length is 128 mod 256."""
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def read_header(path: Path) -> dict:
    """The JSON header of the safetensors file ``path`` (never unpickles, never loads tensors).

    A safetensors file is: 8 bytes, the header's length n (little-endian); n bytes of JSON, an
    object; the tensors' raw bytes.  The file is recognised by that structure first; only a file
    that does not have it is looked at as a pickle or a zip archive, and refused as such; anything
    else is "not a readable safetensors file".  Raises DDPMCheckError (or OSError from the file
    system)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = None
        if 2 <= n <= min(size - 8, MAX_HEADER):
            raw = fh.read(n)
            if raw[:1] == b"{":  # a JSON object: what every safetensors header is
                try:
                    header = json.loads(raw)
                except (ValueError, RecursionError):
                    header = None
    if isinstance(header, dict):
        return header
    if _looks_like_pickle(head):
        raise _pickle_refusal(path)
    why = (f"only {len(head)} bytes" if len(head) < 8
           else f"header length {n} does not fit a file of {size} bytes" if not 2 <= n <= min(size - 8, MAX_HEADER)
           else "its header is not a JSON object")
    raise DDPMCheckError(f"checkpoint {str(path)!r} is not a readable safetensors file ({why})")


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint (file or run folder) -> (tensors on CPU, meta dict).  Never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = resolve(path)

    def unreadable(why: str) -> DDPMCheckError:
        return DDPMCheckError(f"checkpoint {str(f)!r} is not a readable safetensors file ({why})")

    try:
        header = read_header(f)
        tensors = load_file(f)  # memory-mapped; parses only the header and raw buffers
    except DDPMCheckError:
        raise
    except OSError as exc:
        raise DDPMCheckError(f"cannot read checkpoint {str(f)!r}: {exc.strerror or exc}") from None
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError) as exc:
        raise unreadable(first_line(exc)) from None
    text = (header.get("__metadata__") or {}).get(META_KEY)
    if text is None:
        raise DDPMCheckError(f"checkpoint {str(f)!r} is a safetensors file but not a ddpm-check checkpoint (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: '[' nested 100,000 deep
        raise DDPMCheckError(f"checkpoint {str(f)!r} has corrupt configuration JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DDPMCheckError(
            f"checkpoint {str(f)!r} has format {meta.get('format') if isinstance(meta, dict) else None!r}; expected {FORMAT!r}"
        )
    return tensors, meta


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix/``, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_limits(meta: dict, source: str) -> None:
    """Raise DDPMCheckError if a size in the configuration ``meta`` (checkpoint JSON or
    ``Trainer.config_dict()``-like) is beyond the MAX_* limits; ``source`` starts the message
    (e.g. ``checkpoint '/runs/a/checkpoint.safetensors'``).

    Only numbers are compared: a value of the wrong type is left to the config classes, which
    reject it with their own messages.  Runs before any of these numbers sizes anything.
    """
    if not isinstance(meta, dict):
        return

    def section(name: str) -> dict:
        d = meta.get(name)
        return d if isinstance(d, dict) else {}

    def bound(what: str, value, limit: int) -> None:
        if isinstance(value, float) and not value.is_integer():  # NaN, inf and 2.5 alike
            raise DDPMCheckError(f"{source}: {what} must be an integer, got {value!r}")
        if _is_number(value) and not value <= limit:
            raise DDPMCheckError(f"{source}: {what} {value!r} is over the limit {limit}")

    sched, model, data, train = section("schedule"), section("model"), section("data"), section("train")
    bound("schedule T", sched.get("T"), MAX_T)
    betas = sched.get("betas")
    if isinstance(betas, (list, tuple)) and len(betas) > MAX_T:
        raise DDPMCheckError(f"{source}: schedule betas has {len(betas)} values, over the limit {MAX_T}")
    bound("model image_channels", model.get("image_channels"), MAX_WIDTH)
    bound("model time_emb_dim", model.get("time_emb_dim"), MAX_WIDTH)
    down = model.get("down_channels")
    if isinstance(down, (list, tuple)):
        if len(down) > MAX_DEPTH + 1:
            raise DDPMCheckError(
                f"{source}: model down_channels has {len(down)} entries (depth {len(down) - 1}), "
                f"over the limit {MAX_DEPTH + 1} (depth {MAX_DEPTH})"
            )
        for i, c in enumerate(down):
            bound(f"model down_channels[{i}]", c, MAX_WIDTH)
    bound("data image_size", data.get("image_size"), MAX_IMAGE_SIZE)
    bound("data channels", data.get("channels"), MAX_WIDTH)
    bound("data n", data.get("n"), MAX_MIXTURE_N)
    bound("data n_components", data.get("n_components"), MAX_MIXTURE_COMPONENTS)
    bound("train batch_size", train.get("batch_size"), MAX_BATCH)
    step = meta.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise DDPMCheckError(f"{source}: step must be an integer >= 0, got {step!r}")


def check_weights(tensors: dict[str, torch.Tensor], model_cfg, source: str,
                  prefixes: tuple[str, ...] = ("ema", "model")) -> None:
    """Raise DDPMCheckError unless the weights under each of ``prefixes`` present in ``tensors``
    (``ema`` must be) have exactly the names and shapes of ``SimpleUnet(model_cfg)``'s state_dict.

    The expected shapes come from a SimpleUnet built on the ``meta`` device (shapes only, no
    memory), so a configuration that does not describe the stored tensors fails here, before a
    real model is allocated from it.  Call :func:`check_limits` first (it bounds the widths).
    """
    from ddpm_check.unet import SimpleUnet

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SimpleUnet(model_cfg).state_dict().items()}
    what = (f"image_channels {model_cfg.image_channels}, down_channels {list(model_cfg.down_channels)}, "
            f"time_emb_dim {model_cfg.time_emb_dim}")
    for prefix in prefixes:
        stored = {k: tuple(v.shape) for k, v in prefixed(tensors, prefix).items()}
        if not stored and prefix != "ema":
            continue
        head = f"{source}: its {prefix!r} weights do not match its model configuration ({what})"
        missing = [k for k in expected if k not in stored]
        if missing:
            raise DDPMCheckError(f"{head}: {prefix}/{missing[0]} is missing ({len(missing)} missing in all)")
        extra = [k for k in stored if k not in expected]
        if extra:
            raise DDPMCheckError(f"{head}: unexpected {prefix}/{extra[0]} ({len(extra)} unexpected in all)")
        for k, shape in expected.items():
            if stored[k] != shape:
                raise DDPMCheckError(
                    f"{head}: {prefix}/{k} has shape {list(stored[k])} in the file, {list(shape)} in that configuration"
                )
        for k, v in prefixed(tensors, prefix).items():  # NaN weights sample NaN images without a word
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                bad = int((~torch.isfinite(v)).sum())
                raise DDPMCheckError(f"{source}: its weights are not finite: {prefix}/{k} holds {bad:,} NaN or inf "
                                     f"value(s) of {v.numel():,} (a diverged or corrupt run)")
