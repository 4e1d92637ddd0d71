"""The reference language model: a small decoder-only transformer over bytes.

A byte vocabulary (256 symbols) needs no tokenizer, so nothing is downloaded to train or to serve it,
and every UTF-8 text is a valid prompt. The module is written for ``torch.jit.script``: the exported
``model.pt`` carries both ``forward`` (logits at every position, for training) and
``forward_cached`` (new tokens of several sequences against their key/value caches, for generation),
so the Triton model runs the very definition that was trained without the trainer's package.

A key/value cache holds, per layer, the keys and values of every position seen so far in each of
``slots`` sequences, laid out ``(layers, slots, context_length, heads, head_dim)``; a generation
step then costs one position's projections instead of the whole prefix's.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

BYTE_VOCABULARY = 256


@runtime_checkable
class LanguageModel(Protocol):
    """What the trainer needs from a causal language model besides being an ``nn.Module``."""

    vocab_size: int
    context_length: int


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which a position sees only itself and the positions before it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``(batch, positions, heads, head_dim)`` of ``x`` ``(batch, positions, dim)``."""
        batch, positions, _ = x.shape
        q, k, v = self.qkv(x).view(batch, positions, 3, self.heads, self.head_dim).unbind(2)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, positions, dim = x.shape
        q, k, v = self._project(x)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.proj(y.transpose(1, 2).reshape(batch, positions, dim))  # type: ignore[no-any-return]

    def forward_cached(
        self,
        x: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """Attend from new positions to everything cached for their sequences, caching the new keys first.

        ``x`` ``(batch, n, dim)`` are the new positions of ``batch`` sequences whose caches are rows
        ``slots`` ``(batch,)`` of ``k_cache``/``v_cache`` ``(slots, context, heads, head_dim)``;
        ``positions`` ``(batch, n)`` are their absolute positions. Cache rows past a sequence's
        position may hold another sequence's leftovers: the mask keeps them out.
        """
        batch, new, dim = x.shape
        q, k, v = self._project(x)
        rows = slots.unsqueeze(1).expand(batch, new)
        k_cache[rows, positions] = k
        v_cache[rows, positions] = v
        seen = int(positions.max()) + 1  # no sequence looks further than the furthest one
        keys = k_cache[slots, :seen].transpose(1, 2)
        values = v_cache[slots, :seen].transpose(1, 2)
        visible = torch.arange(seen, device=x.device).view(1, 1, seen) <= positions.unsqueeze(-1)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=visible.unsqueeze(1))
        return self.proj(y.transpose(1, 2).reshape(batch, new, dim))  # type: ignore[no-any-return]


class Block(nn.Module):
    """A pre-norm transformer block: attention, then a 4x MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))  # type: ignore[no-any-return]

    def forward_cached(
        self,
        x: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.attn_norm(x), slots, positions, k_cache, v_cache)
        return x + self.mlp(self.mlp_norm(x))  # type: ignore[no-any-return]


class ByteTransformer(nn.Module):
    """A GPT-style decoder over bytes: token and learned position embeddings, pre-norm blocks, a linear head.

    The defaults (2 layers, width 64, 4 heads, 128 bytes of context, about 110k parameters) learn
    English spelling from the shipped corpus in a few hundred CPU steps; pass larger values for a real run.
    """

    def __init__(self, context_length: int = 128, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.vocab_size = BYTE_VOCABULARY
        self.context_length = context_length
        self.layers = layers
        self.heads = heads
        self.head_dim = dim // heads
        self.token_embedding = nn.Embedding(BYTE_VOCABULARY, dim)
        self.position_embedding = nn.Embedding(context_length, dim)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, BYTE_VOCABULARY, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2's scheme: small normal weights, and the residual projections scaled down with depth so
        # the residual stream's variance does not grow with the number of blocks
        for name, parameter in self.named_parameters():
            if parameter.dim() < 2:
                continue
            std = (
                0.02 / math.sqrt(2 * len(self.blocks))
                if name.endswith(("proj.weight", "mlp.2.weight"))
                else 0.02
            )
            nn.init.normal_(parameter, mean=0.0, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, positions, vocab)`` of the next byte after each of ``tokens`` ``(batch, positions)``."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # type: ignore[no-any-return]

    @torch.jit.export
    def new_cache(self, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty key and value caches for ``slots`` sequences, on the model's device and dtype."""
        weight = self.head.weight
        shape = [self.layers, slots, self.context_length, self.heads, self.head_dim]
        return (
            torch.zeros(shape, dtype=weight.dtype, device=weight.device),
            torch.zeros(shape, dtype=weight.dtype, device=weight.device),
        )

    @torch.jit.export
    def forward_cached(
        self,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``(batch, vocab)`` of the byte after the last of ``tokens`` ``(batch, n)``, caching as it goes.

        A prompt is fed whole (``n`` its length, positions 0..n-1), then each generated byte alone
        (``n`` 1) for every running sequence at once, each at its own position.
        """
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for index, block in enumerate(self.blocks):
            # a ModuleList hides its items' types from mypy; TorchScript knows them (and knows no cast)
            x = block.forward_cached(x, slots, positions, k_cache[index], v_cache[index])  # type: ignore[operator]
        return self.head(self.norm(x[:, -1]))  # type: ignore[no-any-return]
