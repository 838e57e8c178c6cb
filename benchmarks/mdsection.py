"""Write one named section of BENCHMARKS.md between markers, leaving the rest of the file alone.

    <!-- BEGIN name -->
    ...
    <!-- END name -->

A section that is not there yet is appended.  Also the machine description the benchmarks print.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nMeasured by the scripts in `benchmarks/`; each section says how to rerun it.\n"


def write_section(name: str, text: str, path: Path = BENCHMARKS_MD) -> Path:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _m: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new if new.endswith("\n") else new + "\n")
    return path


def publish(name: str, text: str, write: bool) -> None:
    """Print a benchmark's section and, with ``write``, put it into BENCHMARKS.md."""
    print("\n" + text)
    if write:
        print(f"wrote {write_section(name, text)}")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU model, logical cores, OS, Python."""
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"
