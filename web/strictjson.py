"""What may be stored as a user's JSON: what every JSON reader can read back.

Python's json module writes `Infinity` for 1e400 and `"\\ud800"` for a lone surrogate, and
recurses without a bound of its own; stored, such a value made every listing that included it
answer 500 (strict JSON out, and UTF-8, refuse them). So values are checked before they are
stored, and values stored before that check are shown as empty rather than breaking a page.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 20


def strict_json_problem(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Why `value` is not strict JSON (finite numbers, valid Unicode, bounded depth), or None."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return f"nested more than {max_depth} levels deep"
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return "object keys must be strings"
                if _bad_text(key):
                    return "holds text that is not valid Unicode (a lone surrogate)"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if _bad_text(item):
                return "holds text that is not valid Unicode (a lone surrogate)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "holds a number JSON cannot represent (too large, or not finite)"
        elif item is not None and not isinstance(item, bool | int):
            return f"holds a {type(item).__name__}, which is not JSON"
    return None


def _bad_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown(value: dict[str, Any]) -> dict[str, Any]:
    """A stored value as an answer may carry it: unreadable ones (stored before the check)
    as empty, so one poisoned row never breaks a listing."""
    if strict_json_problem(value) is not None:
        return {}
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return {}
    return value
