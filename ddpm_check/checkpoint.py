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
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ddpm_check.errors import DDPMCheckError

FORMAT = "ddpm-check/checkpoint-1"
FILENAME = "checkpoint.safetensors"
META_KEY = "ddpm_check"


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
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` and the JSON ``meta`` atomically to ``path`` (and ``config.json`` beside it)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **meta}
    text = json.dumps(meta, indent=2, sort_keys=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write_bytes(path, save(flat, metadata={META_KEY: text}))
    _atomic_write_bytes(path.with_name("config.json"), (text + "\n").encode())
    return path


def _refuse_pickle(path: Path, head: bytes) -> None:
    # A raw pickle starts with the PROTO opcode 0x80; torch.save writes a zip archive ("PK\x03\x04")
    # around a pickle.  Either can carry code; neither is ever parsed here.
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04" or path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin"):
        raise DDPMCheckError(
            f"checkpoint {str(path)!r} looks like a pickle (torch.save / .pt) file: refused, because "
            f"unpickling can run code; ddpm-check reads only its own .safetensors checkpoints"
        )


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint (file or run folder) -> (tensors on CPU, meta dict).  Never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = resolve(path)

    def unreadable(why: str) -> DDPMCheckError:
        return DDPMCheckError(f"checkpoint {str(f)!r} is not a readable safetensors file ({why})")

    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            _refuse_pickle(f, head)
            if len(head) < 8:
                raise unreadable(f"only {len(head)} bytes")
            n = int.from_bytes(head, "little")  # the JSON header's length
            if not 2 <= n <= min(size - 8, 100_000_000):
                raise unreadable(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(fh.read(n))
        tensors = load_file(f)  # memory-mapped; parses only the header and raw buffers
    except DDPMCheckError:
        raise
    except OSError as exc:
        raise DDPMCheckError(f"cannot read checkpoint {str(f)!r}: {exc.strerror or exc}") from None
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise unreadable(first) from None
    text = (header.get("__metadata__") or {}).get(META_KEY) if isinstance(header, dict) else None
    if text is None:
        raise DDPMCheckError(f"checkpoint {str(f)!r} is a safetensors file but not a ddpm-check checkpoint (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(text)
    except ValueError:
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
