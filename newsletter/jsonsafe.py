"""JSON from outside, read strictly: only what RFC 8259 allows, as a clear error otherwise.

Python's json module accepts NaN and Infinity, decodes lone surrogate escapes
(`"\\ud800"`) into strings no database or mail can hold, and raises RecursionError
or a digit-limit ValueError on hostile input. Here every such body is one
`json.JSONDecodeError` with a message saying what is wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any

# An escaped surrogate anywhere: only then is the slower lone-surrogate check run.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NotJSONNumber(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refuse_constant(name: str) -> Any:
    raise _NotJSONNumber(name)


def loads(data: bytes | str) -> Any:
    """The decoded document, or JSONDecodeError for anything RFC 8259 does not allow."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise json.JSONDecodeError("the body is not UTF-8", "", exc.start) from None
    else:
        text = data
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError:
        raise
    except _NotJSONNumber as exc:
        message = f"{exc.name} is not a number JSON allows"
        raise json.JSONDecodeError(message, text, max(text.find(exc.name), 0)) from None
    except RecursionError:
        raise json.JSONDecodeError("the document is nested too deeply", text, 0) from None
    except ValueError:
        # Integers over Python's digit limit (4,300 digits).
        raise json.JSONDecodeError("a number has too many digits", text, 0) from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            message = "a string holds a lone surrogate escape (\\ud800-\\udfff)"
            raise json.JSONDecodeError(message, text, 0) from None
    return value
