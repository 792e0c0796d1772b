"""What quantization changed in the tokens the model was trained to produce, full precision vs quantized.

The gate reads the *answer tokens* of held-out sequences (for chat data: the assistant contents plus their EOS,
rendered and masked exactly as ``mft-data tokenize`` does for training), teacher-forced through both models:

- **answer NLL**: mean negative log-likelihood per answer token. Its increase (quantized - fp) is in nats, i.e.
  the log of the answer-perplexity ratio: 0.05 nats is +5.1 % answer perplexity whatever the fp loss is (a
  relative increase of a small loss would turn noise into a large ratio);
- **top-1 agreement**: the share of answer positions where the quantized model's argmax is the fp model's
  (the token greedy decoding would pick, given the same prefix).

Perplexity over every token (user prompts included) is reported as a secondary column: prompts are text the
model never learned to produce, so they dominate it and hide what happened to the answers. It gates only when
``--max-ppl-increase`` is given.
"""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class EvalSequence:
    """One held-out sequence: the ids the model reads, and which of them it was trained to produce."""

    id: str
    task: str
    input_ids: np.ndarray  # int
    answer: np.ndarray  # bool per token, unshifted like training labels (answer[t]: token t is a target)

    @property
    def answer_tokens(self) -> int:
        return int(self.answer[1:].sum())  # the first token is never predicted


@dataclass(frozen=True, eq=False)
class TokenScores:
    """One model on one sequence, per predicted position t (the prediction of token t + 1)."""

    nll: np.ndarray  # float64 [T - 1]
    top1: np.ndarray  # int64 [T - 1], the argmax


def score_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> TokenScores:
    """Teacher-forced per-position NLL of the next token and the argmax, from ``[T, V]`` logits of ``[T]`` ids."""
    logits = logits[:-1].float()
    nll = torch.nn.functional.cross_entropy(logits, input_ids[1:].long(), reduction="none")
    return TokenScores(nll.double().cpu().numpy(), logits.argmax(-1).cpu().numpy())


def answer_nll(scores: TokenScores, answer: np.ndarray) -> tuple[float, int]:
    """(sum of NLL, count) over the answer tokens: position t predicts token t + 1, so the mask is shifted."""
    mask = np.asarray(answer[1:], dtype=bool)
    return float(scores.nll[mask].sum()), int(mask.sum())


def top1_agreement(fp: TokenScores, quant: TokenScores, answer: np.ndarray) -> tuple[int, int]:
    """(positions where both argmaxes agree, count) over the answer tokens."""
    mask = np.asarray(answer[1:], dtype=bool)
    return int((fp.top1[mask] == quant.top1[mask]).sum()), int(mask.sum())


@torch.no_grad()
def score_model(model, sequences: Sequence[EvalSequence]) -> list[TokenScores]:
    """Each sequence alone (no padding to get wrong), teacher-forced."""
    device = next(model.parameters()).device
    out = []
    for s in sequences:
        ids = torch.as_tensor(s.input_ids, dtype=torch.long, device=device)
        logits = model(input_ids=ids[None], use_cache=False).logits[0]
        out.append(score_logits(logits, ids))
    return out


def measure(model_dir: Path, sequences: Sequence[EvalSequence], device: str, dtype=None) -> list[TokenScores]:
    """Load a model (plain transformers, so a GPTQ folder goes through optimum + gptqmodel), score, free it."""
    from transformers import AutoModelForCausalLM

    kwargs = {"device_map": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).eval()
    try:
        return score_model(model, sequences)
    finally:
        del model
        gc.collect()


@dataclass
class _Tally:
    nll_fp: float = 0.0
    nll_quant: float = 0.0
    answer: int = 0
    agree: int = 0
    all_fp: float = 0.0
    all_quant: float = 0.0
    tokens: int = 0

    def add(self, f: TokenScores, q: TokenScores, answer: np.ndarray) -> None:
        nll_f, n = answer_nll(f, answer)
        self.nll_fp += nll_f
        self.nll_quant += answer_nll(q, answer)[0]
        self.answer += n
        self.agree += top1_agreement(f, q, answer)[0]
        self.all_fp += float(f.nll.sum())
        self.all_quant += float(q.nll.sum())
        self.tokens += len(f.nll)


def _finite(x: float) -> float | None:
    """None for NaN/inf (a broken model): JSON has neither, and the gate treats None as failed."""
    return x if math.isfinite(x) else None


def _ppl(nll_sum: float, count: int) -> float:
    return math.exp(nll_sum / count) if nll_sum / count < 700 else math.inf


def compare(
    sequences: Sequence[EvalSequence],
    fp: Sequence[TokenScores],
    quant: Sequence[TokenScores],
    max_nll_increase: float,
    min_agreement: float,
    max_ppl_increase: float | None = None,
) -> dict:
    """Per task and ``overall`` (token-weighted): answer NLL, top-1 agreement, all-token perplexity; the gate."""
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    for s, f, q in zip(sequences, fp, quant, strict=True):
        for key in (s.task, "overall"):
            tallies[key].add(f, q, s.answer)
    answer, agreement, ppl = {}, {}, {}
    for key, t in tallies.items():
        if t.answer:
            mean_fp, mean_q = t.nll_fp / t.answer, t.nll_quant / t.answer
            answer[key] = {
                "fp": _finite(mean_fp),
                "quantized": _finite(mean_q),
                "increase": _finite(mean_q - mean_fp),
                "tokens": t.answer,
            }
            agreement[key] = t.agree / t.answer
        if t.tokens:
            ppl_fp, ppl_q = _ppl(t.all_fp, t.tokens), _ppl(t.all_quant, t.tokens)
            ppl[key] = {"fp": _finite(ppl_fp), "quantized": _finite(ppl_q), "increase": _finite(ppl_q / ppl_fp - 1)}
    nll_increase = answer.get("overall", {}).get("increase")
    agree_overall = agreement.get("overall")
    ppl_increase = ppl.get("overall", {}).get("increase")
    failures = []
    # written as "not (ok)" so that a NaN or a missing number (a broken model) fails
    if not (nll_increase is not None and nll_increase <= max_nll_increase):
        failures.append(
            f"answer-token NLL rose {_fmt(nll_increase, '+.3f')} nats, above --max-nll-increase {max_nll_increase:g}"
        )
    if not (agree_overall is not None and agree_overall >= min_agreement):
        failures.append(
            f"top-1 agreement on answer tokens {_fmt(agree_overall, '.1%')}, below --min-agreement {min_agreement:g}"
        )
    if max_ppl_increase is not None and not (ppl_increase is not None and ppl_increase <= max_ppl_increase):
        failures.append(
            f"all-token perplexity rose {_fmt(ppl_increase, '+.1%')}, above --max-ppl-increase {max_ppl_increase:g}"
        )
    return {
        "answer_nll": answer,
        "agreement": agreement,
        "perplexity": ppl,
        "overall": {"nll_increase": nll_increase, "agreement": agree_overall, "ppl_increase": ppl_increase},
        "gate": {
            "max_nll_increase": max_nll_increase,
            "min_agreement": min_agreement,
            "max_ppl_increase": max_ppl_increase,
        },
        "failures": failures,
        "passed": not failures,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "n/a (non-finite logits)" if x is None else format(x, spec)
