import pytest
from helpers import tokenized_folder


@pytest.fixture(scope="session")
def llama_tok(llama_base, tmp_path_factory):
    return tokenized_folder(tmp_path_factory.mktemp("merge-tok"), llama_base, seq_len=96, split=0.2)
