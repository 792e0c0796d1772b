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


@pytest.mark.fast
def test_trl_peers_get_a_generation_template_that_masks_what_mft_trains(llama_base):
    """The benchmarks give TRL MFTCoder's template with `{% generation %}` around the trained span; it must
    follow mft_core's template (it once drifted and the TRL benchmarks stopped running)."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO / "bench"))
    from data_tokenize import generation_template

    tok = AutoTokenizer.from_pretrained(llama_base)
    tok.chat_template = generation_template()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "def f(): pass"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(trained) == "def f(): pass\n" + tok.eos_token
