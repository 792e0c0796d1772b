"""Chat records -> token ids and labels, trained only on assistant contents plus their EOS.

How the loss mask is found, for any chat template:
1. render the whole conversation with the tokenizer's template (the text equals ``apply_chat_template``);
2. for the i-th assistant turn, render the conversation before it with ``add_generation_prompt=True``: its
   length is where the assistant content starts in the full text; the content ends ``len(content)`` later,
   and the EOS string right after it is included;
3. tokenize the full text once (exactly as at inference) with offsets, and supervise the tokens that overlap
   those character spans.
Tokenizing the whole text, not pieces, matters for SentencePiece tokenizers: a piece tokenized alone gets a
leading "▁" that the model never sees at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mft_core.errors import ConfigError, InputError
from mft_core.templates import DEFAULT_CHAT_TEMPLATE

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized record: ``labels[i]`` is ``input_ids[i]`` where supervised, else -100 (unshifted, HF style)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def chat_template_of(tokenizer) -> str:
    """The tokenizer's own template, or MFTCoder's default when it has none."""
    return tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE


class ChatEncoder:
    """Renders and tokenizes chat records for one tokenizer. Batch methods, because both steps batch well."""

    def __init__(self, tokenizer, chat_template: str | None = None):
        if tokenizer.eos_token is None:
            raise ConfigError(
                "the tokenizer has no EOS token, so the model could never learn to stop",
                fix="set eos_token in tokenizer_config.json (or use a tokenizer that has one)",
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("mft-data needs a fast (Rust) tokenizer for character offsets",
                              fix="save the tokenizer with tokenizer.json (AutoTokenizer(..., use_fast=True))")
        self.tokenizer = tokenizer
        self.template = chat_template or chat_template_of(tokenizer)
        self.eos = tokenizer.eos_token

    def render(self, conversations: Sequence[list[dict[str, str]]], add_generation_prompt: bool = False) -> list[str]:
        """Texts exactly as ``tokenizer.apply_chat_template(..., tokenize=False)`` renders them."""
        if not conversations:
            return []
        return self.tokenizer.apply_chat_template(
            list(conversations),
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def supervised_spans(self, records: Sequence[dict[str, Any]], texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans (start, end) of each assistant content plus its EOS, per record."""
        jobs: list[tuple[int, int]] = []  # (record index, round index) of assistant turns with a prefix
        prefixes_in: list[list[dict[str, str]]] = []
        for r, record in enumerate(records):
            rounds = record["chat_rounds"]
            for i, turn in enumerate(rounds):
                if turn["role"] == "assistant" and i > 0:
                    jobs.append((r, i))
                    prefixes_in.append(rounds[:i])
        prefix_len = {job: len(text) for job, text in zip(jobs, self.render(prefixes_in, add_generation_prompt=True))}
        spans: list[list[tuple[int, int]]] = []
        for r, (record, text) in enumerate(zip(records, texts)):
            cursor, found = 0, []
            for i, turn in enumerate(record["chat_rounds"]):
                if turn["role"] != "assistant":
                    continue
                start = max(cursor, prefix_len.get((r, i), 0))
                content = turn["content"]
                pos = text.find(content, start)
                if pos < 0 and content.strip():
                    content = content.strip()  # some templates trim contents
                    pos = text.find(content, start)
                if pos < 0:
                    raise InputError(
                        f"record {record.get('id')!r} (task {record.get('task')!r}): assistant round {i} does not "
                        "appear in the rendered chat template",
                        fix="the chat template rewrites assistant contents; use a template that keeps them verbatim",
                    )
                end = pos + len(content)
                if text.startswith(self.eos, end):
                    end += len(self.eos)
                found.append((pos, end))
                cursor = end
            spans.append(found)
        return spans

    def encode(self, records: Sequence[dict[str, Any]]) -> list[Encoded]:
        """Tokenize records (unified schema) into ids and labels; the first token is never supervised."""
        conversations = [r["chat_rounds"] for r in records]
        texts = self.render(conversations)
        spans = self.supervised_spans(records, texts)
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for ids, offsets, record_spans in zip(batch["input_ids"], batch["offset_mapping"], spans):
            mask = _overlap_mask(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), record_spans)
            if mask.size:
                mask[0] = False  # nothing precedes it, and in a packed row it must not be predicted from another record
            labels = np.where(mask, np.asarray(ids, dtype=np.int64), IGNORE)
            out.append(Encoded(list(ids), labels.tolist()))
        return out


def _overlap_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """True for tokens whose [start, end) overlaps any span (spans sorted and disjoint)."""
    if not spans or offsets.size == 0:
        return np.zeros(len(offsets), dtype=bool)
    span_arr = np.asarray(spans, dtype=np.int64)
    starts, ends = offsets[:, 0], offsets[:, 1]
    idx = np.searchsorted(span_arr[:, 1], starts, side="right")  # first span ending after the token starts
    valid = idx < len(span_arr)
    idx = np.minimum(idx, len(span_arr) - 1)
    return valid & (ends > span_arr[idx, 0]) & (ends > starts)
