"""ddpm_check.checkpoint reads every safetensors file it writes, whatever its header's length,
and still refuses pickles and torch.save archives by what they are.

A safetensors file starts with its header's length as 8 little-endian bytes, then the JSON header
(which holds the run's configuration, so its length depends on the settings).  The first byte is
the length's low byte: 0x80 whenever the length is 128 mod 256, which is also a pickle's first
byte (the PROTO opcode).  A guard that looked at that byte refused such checkpoints.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ddpm_check import checkpoint as ckpt
from ddpm_check.errors import DDPMCheckError

DATA = torch.arange(3, dtype=torch.float32)


def _write_ours(folder, pad: int):
    """A checkpoint written by ckpt.save whose header grows with ``pad``."""
    path = folder / "checkpoint.safetensors"
    ckpt.save(path, {"w": DATA}, {"format": ckpt.FORMAT, "pad": "x" * pad})
    return path


def _write_raw(path, header_length: int):
    """A valid safetensors file (by the format's rules, not our writer's) whose JSON header is
    exactly ``header_length`` bytes, padded with spaces: the format does not require alignment."""
    header = json.dumps({"__metadata__": {ckpt.META_KEY: json.dumps({"format": ckpt.FORMAT})},
                         "w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}).encode()
    assert len(header) <= header_length
    path.write_bytes(header_length.to_bytes(8, "little") + header.ljust(header_length) + DATA.numpy().tobytes())
    return path


def test_every_header_length_residue_loads(tmp_path):
    """Every residue mod 256 of the header length, 0x80 (a pickle's first byte) among them."""
    for n in range(300, 300 + 256):
        path = _write_raw(tmp_path / f"h{n}.safetensors", n)
        assert path.read_bytes()[0] == n % 256
        tensors, meta = ckpt.load(path)
        assert torch.equal(tensors["w"], DATA) and meta["format"] == ckpt.FORMAT


def test_our_own_checkpoints_load_whatever_their_settings(tmp_path):
    """ckpt.save pads the header to 8 bytes: lengths 128 mod 256 come up every 256 bytes."""
    hit = 0
    for pad in range(0, 520, 3):
        path = _write_ours(tmp_path / f"p{pad}", pad)
        hit += path.read_bytes()[0] == 0x80
        assert ckpt.load(path)[1]["pad"] == "x" * pad
    assert hit >= 2  # the case that was refused is among them


@given(st.integers(min_value=0, max_value=5000))
def test_property_any_metadata_length_loads(tmp_path_factory, pad):
    path = _write_ours(tmp_path_factory.mktemp("prop"), pad)
    assert ckpt.load(path)[1]["pad"] == "x" * pad


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this runs open(marker, "w")
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_pickles_are_still_refused_by_what_they_are(tmp_path, protocol, kind):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _Evil(marker)}, protocol=protocol)
    if kind == "torch-zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", payload)
        payload = buf.getvalue()
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(payload)
    with pytest.raises(DDPMCheckError, match="looks like a pickle .* refused"):
        ckpt.load(path)
    assert not marker.exists()


def test_a_pickle_whose_first_bytes_read_as_a_fitting_length_is_refused(tmp_path):
    """A pickle padded so that its first 8 bytes name a length that fits the file: the bytes
    after them are no JSON object, so it is still no safetensors file, and it is a pickle."""
    payload = pickle.dumps(list(range(2000)), protocol=2)
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(payload)
    n = int.from_bytes(payload[:8], "little")
    with pytest.raises(DDPMCheckError, match="pickle"):
        ckpt.load(path)
    assert payload[0] == 0x80 and n > 0


def test_deeply_nested_configuration_json_is_one_line(tmp_path):
    """A valid safetensors file whose configuration is '[' x 100,000: RecursionError before."""
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint.safetensors"
    save_file({"w": DATA}, path, metadata={ckpt.META_KEY: "[" * 100_000})
    with pytest.raises(DDPMCheckError, match="corrupt configuration JSON"):
        ckpt.load(path)


@pytest.mark.parametrize("err, words", [
    (28, ["no space left on the device to write checkpoint.safetensors (", " bytes) in folder ", "choose another --out"]),
    (13, ["cannot write checkpoint.safetensors in folder ", "Permission denied"]),
])
def test_a_failed_save_names_the_file_and_folder_not_the_temporary(tmp_path, monkeypatch, err, words):
    import os

    def fail(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ckpt.os, "fsync", fail)
    path = tmp_path / "run" / "checkpoint.safetensors"
    with pytest.raises(DDPMCheckError) as e:
        ckpt.save(path, {"w": DATA}, {"pad": ""})
    msg = str(e.value)
    assert all(w in msg for w in words) and str(tmp_path / "run") in msg and ".tmp" not in msg, msg
    assert not any(p.name.startswith(".") for p in (tmp_path / "run").iterdir())  # no temporary left behind
