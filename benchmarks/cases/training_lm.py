"""A byte-level transformer language model on real text, for the storage benchmark.

There is no network on the reference machine, so the text is what ships with every
Python: the standard library's own ``*.py`` sources and docstrings, read in sorted path
order (``site-packages`` left out, so installed packages cannot change it). The model is
a small pre-norm GPT (learned positions, causal self-attention, 4x GELU MLP); AdamW
trains all of it, or, for fine-tuning, only its last quarter of blocks and its head.
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LMConfig", "LMTrainer", "TinyGPT", "read_corpus", "trainable_tail"]

VOCAB = 256


@dataclass(frozen=True, slots=True)
class LMConfig:
    """Model shape, batch and optimizer; ``steps`` optimizer steps per checkpoint."""

    layers: int = 4
    d_model: int = 256
    heads: int = 4
    context: int = 128
    batch: int = 8
    steps: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.1


def read_corpus(nbytes: int) -> bytes:
    """The first ``nbytes`` of the standard library's ``*.py`` files, concatenated."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        path
        for path in stdlib.rglob("*.py")
        if "site-packages" not in path.relative_to(stdlib).parts
    )
    chunks: list[bytes] = []
    total = 0
    for path in files:
        chunks.append(path.read_bytes())
        total += len(chunks[-1])
        if total >= nbytes:
            break
    text = b"".join(chunks)[:nbytes]
    if len(text) < nbytes:
        raise RuntimeError(f"the standard library at {stdlib} has only {len(text)} bytes of .py")
    return text


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, 4 * d_model)
        self.down = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        qkv = self.qkv(self.ln1(x)).view(batch, length, 3, self.heads, d_model // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, d_model))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class TinyGPT(nn.Module):
    """Byte-level GPT; initial weights from torch's global generator (seed it first)."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, config.d_model)
        self.position = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.heads) for _ in range(config.layers)
        )
        self.ln = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.blocks:
            # GPT-2's scaling of the residual projections by depth.
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * config.layers))
            nn.init.normal_(block.down.weight, std=0.02 / math.sqrt(2 * config.layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position.weight[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))


def trainable_tail(model: TinyGPT) -> list[nn.Parameter]:
    """Freeze all but the last quarter of the blocks (at least one), the final norm and
    the head, as a fine-tune that adapts the top of a pre-trained model does; return
    the parameters left to train."""
    keep = max(1, len(model.blocks) // 4)
    trained = [*model.blocks[-keep:], model.ln, model.head]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for module in trained for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


class LMTrainer:
    """AdamW over ``params`` of ``model``, on random windows of ``text``."""

    def __init__(
        self,
        model: TinyGPT,
        params: list[nn.Parameter],
        text: bytes,
        config: LMConfig,
        seed: int,
    ) -> None:
        self.model = model
        self.config = config
        self.data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.offsets = torch.arange(config.context + 1)

    def train(self) -> str:
        """``config.steps`` optimizer steps; the mean training loss in bits per byte."""
        c = self.config
        total = 0.0
        for _ in range(c.steps):
            starts = torch.randint(
                0, self.data.numel() - c.context - 1, (c.batch, 1), generator=self.generator
            )
            window = self.data[starts + self.offsets].long()
            logits = self.model(window[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), window[:, 1:].reshape(-1))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        return f"loss {total / c.steps / math.log(2):.2f} bpb"
