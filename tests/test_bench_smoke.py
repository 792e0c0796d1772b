"""The prepared GPU check runs end to end (tiny, on CPU), so it has not rotted when a GPU is finally lent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["runs"]["mft-lora-sdpa"]["tokens_per_s"] > 0 and result["ratio_vs_trl"] > 0
