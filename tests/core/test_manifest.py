import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from mft_core.errors import ConfigError, ContractError
from mft_core.manifest import (
    InputRef,
    atomic_output_dir,
    has_manifest,
    is_up_to_date,
    new_manifest,
    read_manifest,
)

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`


def test_manifest_round_trip_and_fingerprint(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    m1 = new_manifest("eval", "t", "1", {"a": 1}, [InputRef.of(src)], {"x": 2})
    with atomic_output_dir(tmp_path / "out") as staging:
        (staging.path / "f").write_text("data")
        staging.finish(m1)
    back = read_manifest(tmp_path / "out", "eval")
    assert back == m1
    assert is_up_to_date(tmp_path / "out", new_manifest("eval", "t", "1", {"a": 1}, [InputRef.of(src)]).fingerprint)
    assert not is_up_to_date(tmp_path / "out", new_manifest("eval", "t", "1", {"a": 2}, [InputRef.of(src)]).fingerprint)
    src.write_text("changed")
    assert not is_up_to_date(tmp_path / "out", new_manifest("eval", "t", "1", {"a": 1}, [InputRef.of(src)]).fingerprint)


def test_wrong_kind_and_missing_manifest_are_contract_errors(tmp_path):
    with atomic_output_dir(tmp_path / "out") as staging:
        staging.finish(new_manifest("eval", "t", "1", {}))
    with pytest.raises(ContractError, match="expected adapter"):
        read_manifest(tmp_path / "out", "adapter")
    (tmp_path / "bare").mkdir()
    with pytest.raises(ContractError, match="no manifest.json") as info:
        read_manifest(tmp_path / "bare", made_by="mft-x make")
    assert "mft-x make" in str(info.value)


def test_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as staging:
            (staging.path / "half").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        with atomic_output_dir(tmp_path / "out"):
            pass
    with atomic_output_dir(tmp_path / "out", overwrite=True) as staging:
        staging.finish(new_manifest("eval", "t", "1", {}))
    assert has_manifest(tmp_path / "out")


def test_killed_write_leaves_no_manifest_and_is_cleaned_next_time(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, time
        from mft_core.manifest import atomic_output_dir, new_manifest
        with atomic_output_dir({str(tmp_path / "out")!r}) as staging:
            (staging.path / "weights.bin").write_bytes(b"x" * 1000)
            print("written", flush=True)
            time.sleep(60)
            staging.finish(new_manifest("eval", "t", "1", {{}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".out.tmp-") for p in leftovers)
    assert not any(has_manifest(p) for p in leftovers)
    with atomic_output_dir(tmp_path / "out") as staging:
        staging.finish(new_manifest("eval", "t", "1", {}))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    json.loads((tmp_path / "out" / "manifest.json").read_text())
