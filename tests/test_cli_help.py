"""Every tool installs a console script whose --help works (and is fast: no torch at import)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # unit/contract tier: `make test-fast`

TOOLS = ["mft-data", "mft-train", "mft-merge", "mft-quant", "mft-eval"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help(tool):
    exe = Path(sys.executable).parent / tool
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


@pytest.mark.parametrize("module", ["mft_data.cli", "mft_train.cli", "mft_merge.cli", "mft_quant.cli", "mft_eval.cli"])
def test_cli_import_does_not_load_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
