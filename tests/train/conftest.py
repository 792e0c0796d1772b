import pytest
from helpers import tokenized_folder


@pytest.fixture(scope="session")
def llama_tok(llama_base, tmp_path_factory):
    """Three-task tokenized folder (train + valid) for the tiny llama base."""
    return tokenized_folder(tmp_path_factory.mktemp("llama-tok"), llama_base, seq_len=96, split=0.2)
