"""Language modelling: next-token cross-entropy, validation perplexity, sampled generation.

Batches hold token windows "x" (B, L) and their true "lengths" (B,): position t predicts
token t + 1, and positions past a window's length are masked out. The model is called as
``model(x=...)`` -> logits (B, T, V) for training; generation uses its
``step(x, state) -> (logits, state)`` so a prompt is read once and each new token costs one step.
Each epoch rank 0 also writes a few short samples to ``<run>/samples/epoch_NNNN.json`` (the report shows them).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Optional

import pyarrow as pa
import torch
import torch.nn.functional as F

from distdl.paths import join
from distdl.paths import write_bytes
from distdl.tasks.base import SAMPLES, Task

# Each epoch's samples: a new line (in every vocabulary: lines are joined with it) continued
# with these seeds, so epochs differ only by what the model learned.
SAMPLE_PROMPT, SAMPLE_SEEDS, SAMPLE_TOKENS, SAMPLE_TEMPERATURE = "\n", (0, 1, 2), 40, 0.8


class LanguageModel(Task):
    metrics = ("val_perplexity", "val_loss", "train_loss")
    default_best = "val_perplexity"
    output_types = {"generated": pa.string()}
    # no targets: the next tokens are the inputs shifted by one

    def __init__(self, preprocessor: Any):
        self.pre = preprocessor  # ids <-> text

    def nll(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], reduction: str) -> tuple[torch.Tensor, int]:
        """(negative log-likelihood of every next token, reduced; how many tokens were predicted)."""
        x, lengths = batch["x"], batch["lengths"]  # (B, L), (B,)
        logits = model(x=x[:, :-1]).float()  # (B, L-1, V)
        predicted = torch.arange(x.shape[1] - 1, device=x.device)[None, :] < (lengths - 1)[:, None]  # (B, L-1)
        return F.cross_entropy(logits[predicted], x[:, 1:][predicted], reduction=reduction), int(predicted.sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean over predicted tokens; 'rows' are tokens, so train_loss and samples_per_s count tokens."""
        return self.nll(model, batch, "mean")

    def eval_sums(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        total, tokens = self.nll(model, batch, "sum")
        return {"nll": total.item(), "tokens": float(tokens)}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums.get("nll", 0.0) / max(sums.get("tokens", 0.0), 1.0)
        return {"val_loss": loss, "val_perplexity": math.exp(loss)}

    def predict(self, model: torch.nn.Module, features: dict[str, torch.Tensor], max_new_tokens: int = 200,
                temperature: float = 1.0, top_k: Optional[int] = None, seed: int = 0) -> dict[str, list]:
        """The text generated after each prompt. Rows are generated one by one, each from a
        generator seeded by ``seed`` and the prompt itself: a row's text never depends on its
        batch, and different prompts do not share one stream of random draws."""
        if max_new_tokens < 0 or not temperature >= 0 or (top_k is not None and top_k < 1):  # NaN too
            raise ValueError(f"generation needs max_new_tokens >= 0, temperature >= 0 and top_k >= 1; "
                             f"got {max_new_tokens}, {temperature}, {top_k}")
        out = []
        for prompt, length in zip(features["x"], features["lengths"].tolist()):
            ids = prompt[:length]
            generator = torch.Generator().manual_seed(row_seed(seed, ids.tolist()))
            ids = generate(model, ids, max_new_tokens, temperature, top_k, generator)
            out.append(self.pre.text(ids))
        return {"generated": out}

    def epoch_end(self, model: torch.nn.Module, run_dir: str, epoch: int) -> None:
        """Rank 0: a few short samples from the same prompt and seeds every epoch."""
        prompt = torch.as_tensor(self.pre.encode(SAMPLE_PROMPT), device=next(model.parameters()).device)
        samples = []
        for seed in SAMPLE_SEEDS:
            generator = torch.Generator().manual_seed(row_seed(seed, prompt.tolist()))
            ids = generate(model.eval(), prompt, SAMPLE_TOKENS, SAMPLE_TEMPERATURE, None, generator)
            samples.append(self.pre.text(ids))
        record = {"epoch": epoch, "prompt": SAMPLE_PROMPT, "temperature": SAMPLE_TEMPERATURE, "samples": samples}
        write_bytes(join(run_dir, SAMPLES, f"epoch_{epoch:04d}.json"), json.dumps(record, indent=2).encode())


def row_seed(seed: int, prompt: list[int]) -> int:
    """A 63-bit seed from the user's seed and the prompt's ids (stable across processes)."""
    digest = hashlib.blake2b(json.dumps([seed, prompt]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# Below MIN_TEMPERATURE sampling is greedy: such a temperature picks the most likely token
# anyway, and float32 logits divided by a far smaller one overflow to inf, which softmax turns
# into NaN. Above MAX_TEMPERATURE sampling is already uniform; the cap keeps an infinite
# temperature from making 0 * inf.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 100.0
# The most tokens one prompt may ask for (serve.max_new_tokens is a model's own, tighter, limit).
MAX_NEW_TOKENS = 2**20


@torch.inference_mode()
def generate(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int, temperature: float,
             top_k: Optional[int], generator: torch.Generator) -> list[int]:
    """Sample ``max_new_tokens`` ids after ``prompt`` (T,); temperature 0 (below MIN_TEMPERATURE)
    is greedy, and top_k keeps the k most likely tokens (at least 1, at most all) before sampling."""
    greedy = not temperature >= MIN_TEMPERATURE  # NaN too
    temperature = min(temperature, MAX_TEMPERATURE)
    logits, state = model.step(prompt[None, :], None)  # (1, T, V)
    new: list[int] = []
    for _ in range(max_new_tokens):
        last = logits[0, -1].float().cpu()  # (V,)
        if greedy:
            token = int(last.argmax())
        else:
            last = last / temperature
            if top_k is not None and top_k < len(last):
                last = last.masked_fill(last < last.topk(max(top_k, 1)).values[-1], float("-inf"))
            token = int(torch.multinomial(torch.softmax(last, dim=0), 1, generator=generator))
        new.append(token)
        logits, state = model.step(torch.tensor([[token]], device=prompt.device), state)
    return new
