"""The trusted side of an external verdict: the benchmark's own ``check(candidate)`` runs here, with a stub
``candidate`` that forwards each call's arguments to the sandboxed program and gets back plain data.

Every comparison of the test (``==``, tolerances, properties over random inputs, adaptive calls) runs on fresh
built-in objects in this process, so an always-equal object never reaches it, a forged report has no reader,
and the expected values never leave it. The prelude (the problem's prompt) is the benchmark's: helpers the test
uses (``poly``, ``encode_cyclic``) come from it, never from the program. Arguments the candidate changed in place
are copied back into the test's objects, as if the call had happened here.
"""

from __future__ import annotations

import builtins

from . import codec
from .protocol import read_frame_bytes, write_frame


class CandidateError(Exception):
    """An exception of the candidate's whose type is not a built-in one (its name leads the message)."""


class NeedsInProcess(BaseException):
    """A call whose arguments have no plain encoding: this problem cannot be judged outside the program.

    A ``BaseException``, so a test's ``except Exception`` cannot swallow it."""


class CallFailed(BaseException):
    """The program ended (or was killed) before answering a call.

    This and :class:`NotPlainData` are ``BaseException``s, and a broken call poisons the stub: a test's
    ``except Exception`` cannot turn a reply that never came, or was not data, into a pass."""


class NotPlainData(BaseException):
    """The program's reply was malformed, or its value had no plain-data encoding."""


def _exception(kind: object, message: object) -> BaseException:
    name = kind if isinstance(kind, str) else "?"
    text = message if isinstance(message, str) else ""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and name.isidentifier():
        try:
            return cls(text)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return CandidateError(f"{name}: {text}")


def _copy_into(original, changed) -> None:
    """Make ``original`` (a test's object) hold ``changed`` (the candidate's view of it after the call)."""
    if type(original) is list and type(changed) is list:
        original[:] = changed
    elif type(original) is dict and type(changed) is dict:
        original.clear()
        original.update(changed)
    elif type(original) is set and type(changed) is set:
        original.clear()
        original.update(changed)
    elif type(original) is tuple and type(changed) is tuple and len(original) == len(changed):
        for a, b in zip(original, changed):
            _copy_into(a, b)


class Remote:
    """The ``candidate`` the test calls: one frame out, one frame back, per call."""

    def __init__(self, calls: int, replies: int, name: str):
        self._calls, self._replies = calls, replies
        self.__name__ = name
        self.calls = 0
        self.broken: BaseException | None = None

    def __call__(self, *args, **kwargs):
        if self.broken is not None:
            raise self.broken
        try:
            return self._call(args, kwargs)
        except (CallFailed, NotPlainData) as exc:
            self.broken = exc
            raise

    def _call(self, args: tuple, kwargs: dict):
        try:
            request = codec.dumps(codec.to_plain([list(args), kwargs], ()))
        except codec.NotPlain as exc:
            raise NeedsInProcess(str(exc)) from None
        self.calls += 1
        try:
            write_frame(self._calls, None, raw=request)
        except OSError:
            raise CallFailed("the program is gone (it exited or was killed)") from None
        reply = self._reply()
        if "raise" in reply:
            kind, message = (reply["raise"] + [None, None])[:2] if isinstance(reply["raise"], list) else (None, None)
            raise _exception(kind, message)
        if "unplain" in reply:
            raise NotPlainData(f"the program returned a {str(reply['unplain'])[:80]}, not plain data")
        if "ok" not in reply:
            raise NotPlainData("malformed reply")
        value = self._plain(reply["ok"])
        if "args" in reply:
            changed = self._plain(reply["args"])
            if type(changed) is list and len(changed) == 2 and type(changed[0]) is list:
                _copy_into(args, tuple(changed[0]))
                if type(changed[1]) is dict:
                    for key, item in kwargs.items():
                        if key in changed[1]:
                            _copy_into(item, changed[1][key])
        return value

    def _reply(self) -> dict:
        try:
            data = read_frame_bytes(self._replies, codec.MAX_BYTES)
        except (OSError, ValueError):
            data = None
        if data is None:
            raise CallFailed("the program ended without answering")
        try:
            reply = codec.loads(data)
        except (ValueError, RecursionError):
            raise NotPlainData("malformed reply") from None
        if type(reply) is not dict:
            raise NotPlainData("malformed reply")
        return reply

    @staticmethod
    def _plain(tree):
        try:
            return codec.from_plain(tree)
        except (ValueError, TypeError, RecursionError, OverflowError):
            raise NotPlainData("the reply is not plain data") from None


def judge(prelude: str, test: str, entry_point: str, calls: int, replies: int, verdict: int) -> None:
    """Wait for the program to load, run ``check``, and write the one verdict frame on ``verdict``."""
    remote = Remote(calls, replies, entry_point)
    try:
        loaded = remote._reply()
        if "load_error" in loaded:
            kind, message = (list(loaded["load_error"]) + [None, None])[:2]
            raise _exception(kind, message)
        if loaded.get("loaded") is not True:
            raise NotPlainData("malformed reply")
        namespace: dict = {}
        exec(prelude, namespace)  # noqa: S102 - the benchmark's own prompt (trusted)
        namespace[entry_point] = remote  # a test that names the function calls the program too
        exec(test, namespace)  # noqa: S102 - the benchmark's own test (trusted)
        namespace["check"](remote)
        if remote.broken is not None:
            raise remote.broken
        outcome = {"status": "passed", "calls": remote.calls}
    except NeedsInProcess as exc:
        outcome = {"status": "in-process", "message": f"an argument is not plain data ({exc})"}
    except BaseException as exc:  # noqa: BLE001 - any exception in check is a failure
        try:
            message = str(exc)[:1000]
        except BaseException:  # noqa: BLE001
            message = "<unprintable>"
        name = type(exc).__name__
        if isinstance(exc, CandidateError):
            name, _, message = message.partition(": ")
        outcome = {"status": "failed", "exc_type": name, "message": message, "calls": remote.calls}
    write_frame(verdict, outcome)
