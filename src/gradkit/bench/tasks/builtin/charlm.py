"""Character-level transformer language model on the Python standard library's source.

Text already on every machine: the ``.py`` files of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``, ``site-packages`` excluded). The split is by file and
deterministic: a file goes to validation when the SHA-1 of its relative path is 0 mod 10.
Characters: tab, newline and printable ASCII get their own token, anything else one shared
token (98 tokens). The metric is validation bits per character (lower is better) on a fixed set
of windows. Different Python versions ship different sources, so compare numbers from one
interpreter only.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gradkit.bench.tasks.interface import Task

VOCAB = 98
OTHER = VOCAB - 1
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """Sorted ``.py`` files of the standard library (site-packages excluded)."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in base.rglob("*.py")
        if not _EXCLUDED_DIRS.intersection(p.relative_to(base).parts) and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def is_validation_file(relative_path: str) -> bool:
    """The deterministic split: SHA-1 of the relative POSIX path, 0 mod 10 -> validation."""
    return int(hashlib.sha1(relative_path.encode()).hexdigest(), 16) % 10 == 0


def encode(text: str) -> np.ndarray:
    """Characters to token ids (uint8): tab 0, newline 1, ' '..'~' 2..96, anything else 97."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(128, OTHER, dtype=np.uint8)
    table[9], table[10] = 0, 1
    table[32:127] = np.arange(2, 97, dtype=np.uint8)
    out = np.full(codes.shape, OTHER, dtype=np.uint8)
    ascii_mask = codes < 128
    out[ascii_mask] = table[codes[ascii_mask]]
    return out


def load_corpus(
    max_train_chars: int = 3_000_000, max_val_chars: int = 300_000, root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the train and validation text (files in sorted order, up to the caps)."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    n_train = n_val = 0
    for path in stdlib_files(base):
        rel = path.relative_to(base).as_posix()
        to_val = is_validation_file(rel)
        if (to_val and n_val >= max_val_chars) or (not to_val and n_train >= max_train_chars):
            if n_val >= max_val_chars and n_train >= max_train_chars:
                break
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        ids = encode(text + "\n")
        if to_val:
            val.append(ids)
            n_val += len(ids)
        else:
            train.append(ids)
            n_train += len(ids)
    if not train or not val:
        raise RuntimeError(f"no standard library sources found under {base}")
    return np.concatenate(train)[:max_train_chars], np.concatenate(val)[:max_val_chars]


class CharLMData:
    """Random training windows; validation bits per character on fixed windows."""

    def __init__(
        self,
        train: np.ndarray,
        val: np.ndarray,
        context: int,
        device: torch.device | str,
        val_windows: int = 128,
    ) -> None:
        self.context = context
        self.train = torch.from_numpy(train.astype(np.int64)).to(device)
        val_t = torch.from_numpy(val.astype(np.int64))
        n = min(val_windows, (len(val_t) - 1) // (context + 1))
        stride = (len(val_t) - 1 - (context + 1)) // max(n - 1, 1)
        starts = torch.arange(n) * stride
        self.val = torch.stack([val_t[s : s + context + 1] for s in starts.tolist()]).to(device)

    def signature(self) -> str:
        """SHA-1 of the training text and the validation windows (for the task fingerprint)."""
        from gradkit.bench.tasks.fingerprint import hash_data

        return hash_data(self.train, self.val)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Any:
        starts = torch.randint(
            0, len(self.train) - self.context - 1, (batch_size,), generator=generator
        )
        offsets = torch.arange(self.context + 1)
        idx = (starts[:, None] + offsets[None, :]).to(self.train.device)
        return self.train[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        total = 0.0
        for i in range(0, len(self.val), 64):
            chunk = self.val[i : i + 64]
            logits = model(chunk[:, :-1])
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
                )
            )
        return total / (self.val[:, 1:].numel() * math.log(2))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A small GPT-style character model (token + position embeddings, blocks, head)."""

    def __init__(
        self, vocab: int = VOCAB, dim: int = 64, layers: int = 2, heads: int = 4, context: int = 64
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # noqa: D102
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.embed(idx) + self.pos(pos))))


CONTEXT = 64
_CACHE: dict[str, CharLMData] = {}


def _load(device: torch.device) -> CharLMData:
    key = str(device)
    if key not in _CACHE:
        train, val = load_corpus()
        _CACHE[key] = CharLMData(train, val, CONTEXT, device)
    return _CACHE[key]


STDLIB_CHARLM = Task(
    name="stdlib-charlm",
    description="character-level transformer LM (2 layers, d=64) on the Python stdlib source",
    metric="bits per char",
    higher_is_better=False,
    target=3.0,
    build_model=lambda: CharTransformer(context=CONTEXT),
    load_data=_load,
    steps=800,
    batch_size=32,
    eval_every=100,
    worst=math.log2(VOCAB),
)
