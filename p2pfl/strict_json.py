"""JSON that every parser reads: non-finite floats become null.

`json.dumps` writes NaN and infinity as the bare tokens `NaN` and `Infinity`, which are not JSON:
browsers, jq and most non-Python clients refuse the whole document. A diverged model's loss is NaN
and an unlimited bandwidth is infinite, so documents p2pfl writes for others go through `dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(document: Any, **options: Any) -> str:
    """`json.dumps(document, **options)` with every NaN or infinite float replaced by null."""
    return json.dumps(finite(document), allow_nan=False, **options)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float, however deeply nested, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
