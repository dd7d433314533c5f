"""One ``json_safe``: turn nested results into what strict JSON (``allow_nan=False``) accepts.

Non-finite floats become ``null`` (JSON has no NaN/Inf; "not computable" is what they mean in
metrics and gate records), numpy scalars become Python numbers, mapping keys become strings,
tuples become lists. Everything else is returned as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def json_safe(obj: Any) -> Any:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy / torch scalar
        return json_safe(obj.item())
    return obj
