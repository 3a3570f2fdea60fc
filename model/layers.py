"""Building blocks of the Tutti network, each usable offline and as a stateful stream.

Every layer takes ``(x, state)`` and returns ``(y, new_state)``. Offline processing is one call
with ``state=None``; a causal stream feeds consecutive chunks and carries the state, and gives the
same output as the offline call (the offline call *is* the first step of a stream). Non-causal
layers ignore the state. Tensors are ``(batch, channels, frames)`` unless noted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class FiLM(nn.Module):
    """Feature-wise affine modulation from a conditioning vector ``(B, cond_dim)``."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self._memo: tuple | None = None

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        # A stream passes the same ``cond`` every block: project it once. Not while tracing a
        # compiled step (torch.export): the memo would keep traced placeholders; there the
        # projection goes into the graph.
        memo = None if torch.compiler.is_compiling() else self._memo
        if memo is not None and memo[0] is cond and not torch.is_grad_enabled():
            scale, shift = memo[1]
        else:
            scale, shift = self.proj(cond).unsqueeze(-1).chunk(2, dim=1)
            scale = 1 + scale
            if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
                self._memo = (cond, (scale, shift))
        return torch.addcmul(shift, x, scale)


def pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """``conv`` (a 1x1 Conv1d) on ``x (B, C, T)`` as a matrix product: the same numbers, and
    several times faster than ``conv1d`` on the few frames of a streamed block."""
    return F.linear(x.transpose(1, 2), conv.weight[..., 0], conv.bias).transpose(1, 2)


class StreamConv1d(nn.Module):
    """Conv1d whose padding is causal (left, carried as state) or centred (non-causal).

    With ``kernel = 2 * stride`` a causal output frame ``k`` sees input ``< (k + 1) * stride``.
    Input length must be a multiple of ``stride``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, *, causal: bool,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, groups=groups)
        self.causal = causal
        self.context = kernel - stride
        self.kernel, self.stride = kernel, stride
        self.depthwise = groups == c_in == c_out and groups > 1

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if not self.causal:
            left = self.context // 2
            return self.conv(F.pad(x, (left, self.context - left))), None
        if state is None:
            state = x.new_zeros(x.shape[0], x.shape[1], self.context)
        x = torch.cat([state, x], dim=-1)
        new_state = x[..., x.shape[-1] - self.context:] if self.context else state
        conv, k, stride = self.conv, self.kernel, self.stride
        if x.shape[-1] - k < 16 * stride:  # a few streamed frames: skip conv1d's set-up cost
            frames = x.unfold(-1, k, stride)  # (B, C, n, k)
            weight, bias = conv.weight, conv.bias
            if conv.groups == 1:
                y = F.linear(frames.transpose(1, 2).flatten(2), weight.flatten(1), bias)
                return y.transpose(1, 2), new_state
            if self.depthwise:
                return (frames * weight).sum(-1) + bias[:, None], new_state
        return conv(x), new_state


class StreamConvTranspose1d(nn.Module):
    """Transposed conv with ``kernel = 2 * stride`` as a 1x1 conv plus overlap-add.

    Each input frame yields ``2 * stride`` output samples spread over its own block and the next
    (causal: the spill-over into the next call is carried as state) or centred (non-causal).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, *, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Conv1d(c_in, 2 * stride * c_out, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.stride = stride
        self.c_out = c_out
        self.causal = causal

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        s = self.stride
        frames = rearrange(pointwise(self.proj, x), "b (c two s) t -> b two c (t s)", two=2, s=s)
        head, spill = frames[:, 0], frames[:, 1]  # own block, next block
        y = head + F.pad(spill, (s, 0))[..., : head.shape[-1]]
        tail = spill[..., -s:]
        if not self.causal:
            y = torch.cat([y, tail], dim=-1)
            left = s // 2
            return y[..., left : left + head.shape[-1]] + self.bias[:, None], None
        if state is not None:
            y = torch.cat([y[..., :s] + state, y[..., s:]], dim=-1)
        return y + self.bias[:, None], tail


class EncoderLayer(nn.Module):
    """Downsample by ``stride``: conv(kernel 2*stride) -> FiLM -> GELU -> 1x1 conv -> GLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, cond_dim: int, *, causal: bool):
        super().__init__()
        self.down = StreamConv1d(c_in, c_out, 2 * stride, stride, causal=causal)
        self.film = FiLM(cond_dim, c_out)
        self.mix = nn.Conv1d(c_out, 2 * c_out, 1)

    def forward(self, x: Tensor, cond: Tensor, state: Tensor | None = None):
        y, state = self.down(x, state)
        y = F.gelu(self.film(y, cond))
        return F.glu(pointwise(self.mix, y), dim=1), state


class DecoderLayer(nn.Module):
    """Upsample by ``stride``: context conv(3) -> FiLM -> GLU -> transposed conv -> GELU."""

    def __init__(self, c_in: int, c_out: int, stride: int, cond_dim: int, *, causal: bool):
        super().__init__()
        self.context = StreamConv1d(c_in, 2 * c_in, 3, causal=causal)
        self.film = FiLM(cond_dim, 2 * c_in)
        self.up = StreamConvTranspose1d(c_in, c_out, stride, causal=causal)

    def forward(self, x: Tensor, cond: Tensor, state: tuple | None = None):
        s_ctx, s_up = state if state is not None else (None, None)
        y, s_ctx = self.context(x, s_ctx)
        y = F.glu(self.film(y, cond), dim=1)
        y, s_up = self.up(y, s_up)
        return F.gelu(y), (s_ctx, s_up)


class LocalAttention(nn.Module):
    """Multi-head self-attention over a local window of frames.

    Causal: frame ``i`` attends to frames ``(i - window, i]`` and keeps the last ``window`` keys
    and values as state. Non-causal: frames ``[i - window, i + window]``. Input ``(B, T, D)``.
    With ``pad_past`` (causal) the frames before the start count as ``window`` frames of zero
    input (the projections' biases as keys and values) instead of being left out: the state has
    its final shape from the first frame, so a stream's first blocks need no eager warm-up.
    """

    def __init__(self, dim: int, heads: int, window: int, *, causal: bool,
                 pad_past: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.causal = causal
        self.pad_past = pad_past and causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None):
        # (B, T, 3D) -> q, k, v (B, heads, T, D / heads); plain views: this runs every block
        q, k, v = (F.linear(x, self.qkv.weight, self.qkv.bias)
                   .unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4))
        w, n = self.window, q.shape[2]
        blocks = -(-n // w)
        if self.causal:
            # Keys/values: the last (up to) w of the past, then the new ones; left-padded to w.
            if state is None and self.pad_past:
                state = self.start_state(k.shape[0])
            if state is not None:
                k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)
            past = k.shape[2] - n
            new_state = (k[:, :, -w:], v[:, :, -w:])
            if n == 1:  # one streamed frame: its window is the last w keys, no mask
                y = F.scaled_dot_product_attention(q, *new_state)
                return self._out(y.transpose(1, 2).flatten(2)), new_state
            if n <= 4:  # a few streamed frames: attend directly, no windowing
                pos = torch.arange(past, past + n, device=x.device)[:, None]
                key = torch.arange(past + n, device=x.device)[None, :]
                mask = (key <= pos) & (key > pos - w)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                return self._out(y.transpose(1, 2).flatten(2)), new_state
            left, span = w - past, 2 * w
        else:
            past, new_state = 0, None
            left, span = w, 3 * w
        right = blocks * w + span - w - (left + k.shape[2])
        valid = F.pad(torch.ones(k.shape[2], dtype=torch.bool, device=x.device), (left, right))
        k, v = (F.pad(t, (0, 0, left, right)) for t in (k, v))
        # Block b holds queries [b*w, (b+1)*w) and the keys they may see (unfolded windows).
        q = rearrange(F.pad(q, (0, 0, 0, blocks * w - n)), "b h (n w) d -> b h n w d", w=w)
        k, v = (rearrange(t.unfold(2, span, w), "b h n d s -> b h n s d") for t in (k, v))
        valid = valid.unfold(0, span, w)  # (blocks, span)
        a = torch.arange(w, device=x.device)[:, None]
        c = torch.arange(span, device=x.device)[None, :]
        rel = c - a  # key offset relative to the query's own key at c == a + w
        allowed = (rel >= 1) & (rel <= w) if self.causal else (rel >= 0) & (rel <= 2 * w)
        mask = (allowed[None] & valid[:, None, :]) | (rel == w)[None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = rearrange(y, "b h n w d -> b (n w) (h d)")[:, :n]
        return self._out(y), new_state

    def start_state(self, batch: int) -> tuple[Tensor, Tensor]:
        """``pad_past``'s keys and values before the start: ``window`` frames of zero input,
        each ``(batch, heads, window, D / heads)``."""
        _, k, v = self.qkv.bias.unflatten(0, (3, self.heads, -1))  # (heads, D / heads) each
        return tuple(t[None, :, None].expand(batch, -1, self.window, -1) for t in (k, v))

    def _out(self, y: Tensor) -> Tensor:
        return F.linear(y, self.out.weight, self.out.bias)


class TransformerLayer(nn.Module):
    """Pre-norm block: depthwise positional conv, local attention, FiLM-modulated feed-forward.

    Input ``(B, D, T)``; the positional conv gives order information (no position embeddings,
    so any length streams).
    """

    def __init__(self, dim: int, heads: int, ffn: int, window: int, cond_dim: int, *,
                 causal: bool, pad_past: bool = False) -> None:
        super().__init__()
        self.pos = StreamConv1d(dim, dim, 3, causal=causal, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalAttention(dim, heads, window, causal=causal, pad_past=pad_past)
        self.norm2 = nn.LayerNorm(dim)
        self.film = FiLM(cond_dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x: Tensor, cond: Tensor, state: tuple | None = None):
        # Functional calls of the norms and the feed-forward: a stream runs this on every
        # block, and each module call costs about as much as a small operation.
        s_pos, s_att = state if state is not None else (None, None)
        p, s_pos = self.pos(x, s_pos)
        h = (x + p).transpose(1, 2)  # (B, T, D)
        a, s_att = self.attn(_layer_norm(self.norm1, h), s_att)
        h = h + a
        f = self.film(_layer_norm(self.norm2, h).transpose(1, 2), cond).transpose(1, 2)
        up, down = self.ffn[0], self.ffn[2]
        h = h + F.linear(F.gelu(F.linear(f, up.weight, up.bias)), down.weight, down.bias)
        return h.transpose(1, 2), (s_pos, s_att)


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def sinusoid_features(values: Tensor, n: int = 8) -> Tensor:
    """Smooth scalar features ``(..., 2n)`` for conditioning values of order 1."""
    freqs = torch.exp2(torch.arange(n, device=values.device, dtype=values.dtype)) * math.pi / 8
    angles = values[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
