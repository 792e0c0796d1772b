"""Chat records -> token ids and labels, trained only on assistant contents plus their EOS.

How the loss mask is found, for any chat template:
1. render the whole conversation with the tokenizer's template (the text equals ``apply_chat_template``);
2. for the i-th assistant turn, render the conversation before it with ``add_generation_prompt=True``: its
   length is where the assistant content starts in the full text (for a first turn, which has nothing before
   it, the content is replaced by a sentinel and found in that rendering, i.e. after the role marker); the
   content ends ``len(content)`` later, and the EOS string after it is included, with any whitespace the
   template writes between them (MFTCoder's code form trains ``{content}\n{EOS}``);
3. tokenize the full text once (exactly as at inference) with offsets, and supervise the tokens that overlap
   those character spans.
Tokenizing the whole text, not pieces, matters for SentencePiece tokenizers: a piece tokenized alone gets a
leading "▁" that the model never sees at inference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mft_core.errors import ConfigError, InputError
from mft_core.templates import DEFAULT_CHAT_TEMPLATE

from .formats import SINGLE_TURN_FORMATS

IGNORE = -100
_SENTINEL = "\ue000mft-content\ue000"  # private-use characters: in no real content, kept by any template


@dataclass(frozen=True)
class Encoded:
    """One tokenized record: ``labels[i]`` is ``input_ids[i]`` where supervised, else -100 (unshifted, HF style).

    Arrays (int32) rather than lists: they cross process boundaries and concatenate cheaply.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    # the sequences it holds, in order: None for one record; (chosen, rejected) lengths for a preference pair,
    # which is packed as one unit (both sides in one row, side by side) but attends as two records
    parts: tuple[int, ...] | None = None

    @property
    def supervised(self) -> int:
        return int(np.count_nonzero(self.labels != IGNORE))

    @property
    def lengths(self) -> tuple[int, ...]:
        return self.parts if self.parts is not None else (len(self.input_ids),)

    def part_supervised(self) -> list[int]:
        """Supervised tokens of each part (a pair needs both sides supervised)."""
        bounds = np.cumsum((0, *self.lengths))
        return [int(np.count_nonzero(self.labels[a:b] != IGNORE)) for a, b in zip(bounds, bounds[1:])]

    @staticmethod
    def pair(chosen: Encoded, rejected: Encoded) -> Encoded:
        return Encoded(
            np.concatenate([chosen.input_ids, rejected.input_ids]),
            np.concatenate([chosen.labels, rejected.labels]),
            (len(chosen), len(rejected)),
        )

    def __len__(self) -> int:
        return len(self.input_ids)


def chat_template_of(tokenizer) -> str:
    """The tokenizer's own template, or the built-in default (:data:`mft_core.templates.DEFAULT_TEMPLATE`)."""
    return tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE


def is_single_turn(record: dict[str, Any]) -> bool:
    """True for a record formatted from a single-turn prompt/answer pair (``meta.format``), which MFTCoder's
    code renders without the newline after the final EOS (the ``single_turn`` template variable)."""
    meta = record.get("meta")
    return isinstance(meta, dict) and meta.get("format") in SINGLE_TURN_FORMATS


def _compiled(template: str):
    """transformers' own compiled template (same sandbox and extensions as ``apply_chat_template``), or None."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a future transformers moved it: fall back to the public (slower) path
        return None
    return _compile_jinja_template(template)


class ChatEncoder:
    """Renders and tokenizes chat records for one tokenizer. Batch methods, because both steps batch well."""

    def __init__(self, tokenizer, chat_template: str | None = None):
        if tokenizer.eos_token is None:
            raise ConfigError(
                "the tokenizer has no EOS token, so the model could never learn to stop",
                fix="set eos_token in tokenizer_config.json (or use a tokenizer that has one)",
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                "mft-data needs a fast (Rust) tokenizer for character offsets",
                fix="save the tokenizer with tokenizer.json (AutoTokenizer(..., use_fast=True))",
            )
        self.tokenizer = tokenizer
        self.template = chat_template or chat_template_of(tokenizer)
        self.eos = tokenizer.eos_token
        self._compiled = _compiled(self.template)
        self._clean_split: bool | None = None
        self._template_vars = dict(tokenizer.special_tokens_map)
        self._eos_after = re.compile(r"\s*" + re.escape(self.eos))  # EOS, after whitespace the template writes

    def render(
        self,
        conversations: Sequence[list[dict[str, str]]],
        add_generation_prompt: bool = False,
        single_turn: Sequence[bool] | None = None,
    ) -> list[str]:
        """Texts exactly as ``tokenizer.apply_chat_template(..., tokenize=False)`` renders them (tested).

        ``single_turn[i]`` is passed to the template as the ``single_turn`` variable (see :func:`is_single_turn`);
        templates that do not use it ignore it.
        """
        if not conversations:
            return []
        flags = list(single_turn) if single_turn is not None else [False] * len(conversations)
        if self._compiled is not None:
            render = self._compiled.render
            return [
                render(
                    messages=c,
                    tools=None,
                    documents=None,
                    add_generation_prompt=add_generation_prompt,
                    single_turn=flag,
                    **self._template_vars,
                )
                for c, flag in zip(conversations, flags)
            ]
        return [
            self.tokenizer.apply_chat_template(
                c,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                single_turn=flag,
            )
            for c, flag in zip(conversations, flags)
        ]

    def render_records(self, records: Sequence[dict[str, Any]]) -> list[str]:
        """The full text of each record (unified schema), as training sees it."""
        return self.render([r["chat_rounds"] for r in records], single_turn=[is_single_turn(r) for r in records])

    def supervised_spans(self, records: Sequence[dict[str, Any]], texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans (start, end) of each assistant content plus its EOS, per record (``texts`` from
        :meth:`render_records`)."""
        jobs: list[tuple[int, int]] = []  # (record index, round index) of assistant turns after another turn
        prefixes_in: list[list[dict[str, str]]] = []
        firsts: list[int] = []  # records whose first turn is the assistant's
        firsts_in: list[list[dict[str, str]]] = []
        for r, record in enumerate(records):
            rounds = record["chat_rounds"]
            for i, turn in enumerate(rounds):
                if turn["role"] == "assistant" and i > 0:
                    jobs.append((r, i))
                    prefixes_in.append(rounds[:i])
                elif turn["role"] == "assistant":
                    firsts.append(r)
                    firsts_in.append([{**turn, "content": _SENTINEL}])
        prefix_len = {job: len(text) for job, text in zip(jobs, self.render(prefixes_in, add_generation_prompt=True))}
        flags = [is_single_turn(records[r]) for r in firsts]
        for r, text in zip(firsts, self.render(firsts_in, single_turn=flags)):
            # nothing precedes a first turn but its role marker: start where the content starts, after the marker
            prefix_len[(r, 0)] = max(text.find(_SENTINEL), 0)
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
                eos = self._eos_after.match(text, end)
                if eos is not None:
                    end = eos.end()
                found.append((pos, end))
                cursor = end
            spans.append(found)
        return spans

    def encode_pairs(self, records: Sequence[dict[str, Any]]) -> list[Encoded]:
        """Preference records (:mod:`mft_data.pairs`), each as one :class:`Encoded` of two parts, chosen then
        rejected; each side is supervised only on its final answer + EOS (the shared prompt, and any earlier
        assistant turn, is context: both sides hold it identically, so training it would cancel out)."""
        from .pairs import pair_problems, sides

        for record in records:
            problems = pair_problems(record)
            if problems:
                raise InputError(
                    f"record {record.get('id')!r} (task {record.get('task')!r}): {problems[0]}",
                    fix="mft-data validate DIR lists every such record; fix or drop them",
                )
        flat = [side for record in records for side in sides(record)]
        encoded = self.encode(flat, final_only=True)
        return [Encoded.pair(encoded[2 * i], encoded[2 * i + 1]) for i in range(len(records))]

    def encode(self, records: Sequence[dict[str, Any]], final_only: bool = False) -> list[Encoded]:
        """Tokenize records (unified schema) into ids and labels; the first token is never supervised.

        Where the tokenizer allows it (see :meth:`_splits_cleanly`), the text is cut where each assistant content
        starts and the pieces are tokenized separately: at inference the prompt (ending with the generation
        prompt) is tokenized on its own and the model generates from there, so a token that merged the prompt's
        last characters with the answer's first ones (byte-level BPE joins "\n" and an indent into one token)
        would teach the model a first step it can never take. Otherwise the whole text is tokenized once.
        A span's tokens are found with ``char_to_token`` at its two ends. ``final_only`` supervises only the last
        assistant turn.
        """
        texts = self.render_records(records)
        spans = self.supervised_spans(records, texts)
        if final_only:  # only the last assistant turn is supervised
            spans = [record_spans[-1:] for record_spans in spans]
        if self._splits_cleanly():
            return [self._encode_pieces(text, record_spans) for text, record_spans in zip(texts, spans)]
        encodings = self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        return [_label(np.asarray(e.ids, dtype=np.int32), [(e, 0, spans_)]) for e, spans_ in zip(encodings, spans)]

    def _encode_pieces(self, text: str, spans: list[tuple[int, int]]) -> Encoded:
        cuts = sorted({0, len(text)} | {start for start, _ in spans})
        bounds = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        encodings = self.tokenizer.backend_tokenizer.encode_batch(
            [text[a:b] for a, b in bounds], add_special_tokens=False
        )
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encodings] or [np.zeros(0, np.int32)])
        parts, base = [], 0
        for encoding, (a, b) in zip(encodings, bounds):
            local = [(max(s, a) - a, min(e, b) - a) for s, e in spans if s < b and e > a]
            parts.append((encoding, base, local))
            base += len(encoding.ids)
        return _label(ids, parts)

    def _splits_cleanly(self) -> bool:
        """True when tokenizing two pieces separately adds nothing at the seam (no prefix space inserted)."""
        if self._clean_split is None:
            sample_a, sample_b = "<s>bot\n", "    return x\n"
            a = self.tokenizer(sample_a, add_special_tokens=False)["input_ids"]
            b = self.tokenizer(sample_b, add_special_tokens=False)["input_ids"]
            decoded = self.tokenizer.decode(a + b, clean_up_tokenization_spaces=False)
            self._clean_split = decoded == sample_a + sample_b
        return self._clean_split


def _label(ids: np.ndarray, parts: list[tuple[Any, int, list[tuple[int, int]]]]) -> Encoded:
    """Labels for ``ids``: each part is (encoding, index of its first token in ``ids``, char spans local to it)."""
    labels = np.full_like(ids, IGNORE)
    for encoding, base, local_spans in parts:
        for start, end in local_spans:
            first = _token_at(encoding, start, end, forward=True)
            last = _token_at(encoding, start, end, forward=False)
            if first is not None and last is not None:
                labels[base + first : base + last + 1] = ids[base + first : base + last + 1]
    if labels.size:
        labels[0] = IGNORE  # nothing precedes it; in a packed row it must not be predicted from another record
    return Encoded(ids, labels)


def _token_at(encoding, start: int, end: int, forward: bool) -> int | None:
    """Index of the first (``forward``) or last token covering a character of ``[start, end)``.

    Characters inside a multi-token byte sequence map fine; characters that map to no token (rare: stripped
    whitespace) are skipped.
    """
    chars = range(start, end) if forward else range(end - 1, start - 1, -1)
    for char in chars:
        token = encoding.char_to_token(char)
        if token is not None:
            return token
    return None
