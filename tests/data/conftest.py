import pytest
from helpers import MULTI_TURN, format_folder


@pytest.fixture
def formatted(tmp_path):
    """Two tasks of mixed lengths, made through the real `format` path."""
    gen = [{"chat_rounds": MULTI_TURN}] + [
        {"instruction": f"Write f{i}", "output": f"def f{i}(x):\n    return x * {i}" + " + x" * (i % 7)}
        for i in range(40)
    ]
    explain = [
        {
            "messages": [
                {"role": "user", "content": f"Explain {i}"},
                {"role": "assistant", "content": f"It multiplies by {i}. " * (1 + i % 5)},
            ]
        }
        for i in range(25)
    ]
    return format_folder(tmp_path / "data", {"gen": gen, "explain": explain})
