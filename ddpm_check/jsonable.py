"""JSON that strict parsers accept, from the toolkit's results (no numpy import: the CLI's
``derive --json`` path stays light)."""

from __future__ import annotations

import math
import numbers
from typing import Any


def jsonable(v: Any) -> Any:
    """``v`` with numpy scalars as Python ones, non-finite floats as "inf"/"-inf"/"nan" strings
    (strict JSON has no Infinity or NaN) and dicts, lists and tuples converted throughout."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, bool) or type(v).__name__ == "bool_":  # numpy's bool is no numbers.Integral
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        return f if math.isfinite(f) else str(f)
    return v
