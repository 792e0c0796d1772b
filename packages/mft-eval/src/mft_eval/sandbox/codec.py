"""Plain data across the sandbox boundary: a tagged JSON encoding of numbers, strings, bools, None, lists, tuples,
dicts, sets and frozensets, bounded in size and depth. No pickle, no classes, nothing callable.

The candidate side encodes what its function returned; the trusted side decodes it into fresh built-in objects and
runs the test's comparisons on those. An object that only *looks* equal (``__eq__`` always True, a subclass of
``int`` or ``str`` overriding comparison) has no encoding, so it can never reach the test: the call fails.

Encoding (``type(x) is ...``, never ``isinstance``): ``None``/``bool``/``str``/float as JSON; ints within 2**53 as
JSON numbers, larger ones as ``["I", hex]`` (no decimal digit limit); ``["L", [...]]`` list, ``["T", [...]]``
tuple, ``["S", [...]]`` set, ``["F", [...]]`` frozenset, ``["D", [[k, v], ...]]`` dict, ``["C", [re, im]]``
complex, ``["B", latin-1 text]`` bytes. NumPy scalars (exact types) become their Python value, which compares
the same way; arrays and every other object are refused.
"""

from __future__ import annotations

import json

MAX_DEPTH = 64
MAX_NODES = 1_000_000
MAX_BYTES = 32 << 20
_SMALL_INT = 1 << 53
_DICT_LIKE = ("OrderedDict", "defaultdict", "Counter")  # stdlib dict subclasses compared as dicts


class NotPlain(Exception):
    """A value that has no plain-data encoding (its type name is the message)."""


def _numpy_scalars() -> tuple[type, ...]:
    import sys

    np = sys.modules.get("numpy")
    if np is None:
        return ()
    names = ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
             "float32", "float64", "longdouble", "complex64", "complex128", "str_")  # fmt: skip
    return tuple(getattr(np, n) for n in names if hasattr(np, n))


def to_plain(value, numpy_scalars: tuple[type, ...] | None = None):
    """The JSON-ready tree of ``value``; raises :class:`NotPlain` for anything outside the plain types."""
    scalars = _numpy_scalars() if numpy_scalars is None else numpy_scalars
    budget = [MAX_NODES]

    def walk(x, depth: int):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise NotPlain("value too large or too deep")
        t = type(x)
        if x is None or t is bool or t is str or t is float:
            return x
        if t is int:
            return x if -_SMALL_INT < x < _SMALL_INT else ["I", hex(x)]
        if t is list or t is tuple or t is set or t is frozenset:
            tags: dict[type, str] = {list: "L", tuple: "T", set: "S", frozenset: "F"}
            tag = tags[t]
            return [tag, [walk(v, depth + 1) for v in x]]
        if t is dict or (t.__module__ == "collections" and t.__name__ in _DICT_LIKE):
            return ["D", [[walk(k, depth + 1), walk(v, depth + 1)] for k, v in dict.items(x)]]
        if t is complex:
            return ["C", [x.real, x.imag]]
        if t is bytes:
            return ["B", x.decode("latin-1")]
        if scalars and t in scalars:
            return walk(x.item(), depth)
        raise NotPlain(t.__name__)

    return walk(value, 0)


def from_plain(tree, depth: int = 0):
    """Fresh built-in objects from a tree made by :func:`to_plain` (raises ``ValueError`` on anything else)."""
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    t = type(tree)
    if tree is None or t is bool or t is str or t is float or t is int:
        return tree
    if t is not list or len(tree) != 2 or type(tree[0]) is not str:
        raise ValueError(f"not a plain-data node: {type(tree).__name__}")
    tag, body = tree
    if tag == "I" and type(body) is str:
        return int(body, 16)
    if tag == "C" and type(body) is list and len(body) == 2 and all(type(v) in (int, float) for v in body):
        return complex(body[0], body[1])
    if tag == "B" and type(body) is str:
        return body.encode("latin-1")
    if type(body) is not list:
        raise ValueError(f"bad body for tag {tag!r}")
    if tag == "D":
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("bad dict item")
            out[from_plain(pair[0], depth + 1)] = from_plain(pair[1], depth + 1)
        return out
    items = [from_plain(v, depth + 1) for v in body]
    kinds = {"L": list, "T": tuple, "S": set, "F": frozenset}
    if tag not in kinds:
        raise ValueError(f"unknown tag {tag!r}")
    return kinds[tag](items)


def dumps(tree) -> bytes:
    return json.dumps(tree, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode()


def loads(data: bytes):
    if len(data) > MAX_BYTES:
        raise ValueError("message too large")
    return json.loads(data)
