"""MaDe: the music grounding network (spec section 4).

Three modules, each a class below:

- :class:`Enhancer` (one per modality): frozen-encoder tokens -> d-dim tokens + pooled vector.
- :class:`XPool`: video-conditioned attention pooling over a track's segments.
- :class:`Detector`: DETR-style encoder over [video; music] tokens and a decoder with one
  query whose content is the pooled video, regressing a normalised (centre, width).

Relevance of a track to a video is ``p_s = cos(h(v), h0(M)) + cos(h(v), h1(M))`` where
``h0`` is the track's mean-pooled tokens and ``h1`` the X-Pool output for that pair.

made-plus switches (``ModelConfig``; all off is the paper's network, parameter for parameter):
``n_music_scales`` > 1 adds X-Pool over the keys averaged over 2, 4, ... windows
(:func:`pool_windows`), fused by learned softmax weights; ``known_width`` takes the cut's
width from the video's frame count (:func:`known_width`), feeds it to the decoder query
and regresses only the start; ``duration_query`` adds an embedding of the video's length
(:func:`duration_features`, through a zero-initialised linear layer) to its pooled vector,
the query of both matching terms, so that a track can be ranked by whether it has a passage
of the clip's length (the cut is exactly as long as the video); ``xpool_sharpness`` > 0
multiplies X-Pool's attention logits by a learned scale starting at that value (the paper's
are fixed at q.k / sqrt(d), about sqrt(d) cos for layer-normed vectors: 8 cos at the tiny
width, so the attention starts nearly uniform and its identity-initialised projections
must grow to focus it); ``start_pointer`` has the decoder point at the window where the cut
starts and regress only an offset from it (:class:`Detector`); ``querybank_size`` > 0
ranks with querybank normalisation (QB-Norm, Bogolin et al., CVPR 2022): a few thousand
training videos' pooled vectors are kept in the checkpoint (``querybank``, filled after
each epoch by ``research/train.py``), and at inference each track's score is lowered by its
soft maximum similarity to them (:meth:`MaDe.score_offsets`). A "hub" track that
every video finds similar (one track serves up to 1,941 MGSV-EC training videos, and
pooled embeddings crowd) stops outranking the right one; the offset depends on the track
alone, so the search computes it once per track with the derived rows
(``encode_music(..., for_search=True)``) and training never sees it.

The X-Pool projections are folded so that scoring one video against many tracks only
needs each track's layer-normalised tokens (``MusicTokens.keys``), which callers can
cache: q.(W_k x + b_k) = (W_k^T q).x + q.b_k, and because attention weights sum to one,
W_o(W_v(sum a_i x_i) + b_v) + b_o equals the attention-weighted sum of projected values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgsv_cli.models.variants import ModelConfig

QUERYBANK_CHUNK_ELEMENTS = 1 << 23  # tracks x querybank videos x d per similarities() call (32 MB in float32)


# ----------------------------------------------------------------------------- token bundles


@dataclass
class VideoTokens:
    """Enhanced video: ``tokens`` [B, F, d], ``mask`` [B, F] bool (True = frame), ``pooled`` [B, d]."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def take(self, index: Tensor) -> "VideoTokens":
        """Rows ``index`` (LongTensor [K]) of the batch."""
        return VideoTokens(self.tokens[index], self.mask[index], self.pooled[index])

    def repeat(self, n: int) -> "VideoTokens":
        """A one-video batch repeated ``n`` times (to pair it with ``n`` tracks)."""
        return VideoTokens(
            self.tokens.expand(n, -1, -1), self.mask.expand(n, -1), self.pooled.expand(n, -1)
        )


@dataclass
class MusicTokens:
    """Enhanced tracks.

    ``tokens`` [N, S, d] (None when only scoring is needed), ``mask`` [N, S] bool,
    ``pooled`` [N, d] (h0 before normalisation), ``keys`` [N, S, d]: the tokens after the
    X-Pool layer norm, all that :meth:`MaDe.score_pairs` needs (and what a cache keeps);
    ``offsets`` float32 [N], what :meth:`MaDe.score_pairs` subtracts from each track's score
    (made-plus querybank normalisation; None: nothing).
    """

    tokens: Tensor | None
    mask: Tensor
    pooled: Tensor
    keys: Tensor
    offsets: Tensor | None = None

    def take(self, index: Tensor) -> "MusicTokens":
        tokens = None if self.tokens is None else self.tokens[index]
        offsets = None if self.offsets is None else self.offsets[index]
        return MusicTokens(tokens, self.mask[index], self.pooled[index], self.keys[index], offsets)

    def for_scoring(self) -> "MusicTokens":
        """Drop the detection tokens: what an index cache needs to keep."""
        return replace(self, tokens=None)

    def trimmed(self) -> "MusicTokens":
        """Without the window slots that are padding in every track (exact, see :func:`trim_padding`)."""
        length = valid_length(self.mask)
        if length == self.mask.shape[1]:
            return self
        tokens = None if self.tokens is None else self.tokens[:, :length]
        return MusicTokens(tokens, self.mask[:, :length], self.pooled, self.keys[:, :length], self.offsets)


# ----------------------------------------------------------------------------- building blocks


def valid_length(mask: Tensor) -> int:
    """Slots up to the batch's last valid one: mask [B, L] -> L' (at least 1)."""
    valid_slots = mask.any(0).nonzero()
    return int(valid_slots.max()) + 1 if len(valid_slots) else 1


def trim_padding(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing slots that are padding in every row: [B, L, D], [B, L] -> [B, L', D], [B, L'].

    Exact for this network: padded slots are never attended to, are zeroed after
    enhancement, and positions count only valid tokens or the slot index from the start.
    """
    length = valid_length(mask)
    if length == mask.shape[1]:
        return tokens, mask
    return tokens[:, :length], mask[:, :length]


def pack_valid_tokens(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's valid tokens to the front (order kept) and drop all-padding columns.

    [B, L, D], [B, L] -> [B, L', D], [B, L'] with L' the longest row's valid count. Exact for
    the detector: positions count valid tokens only and attention ignores key order, so the
    padding between a pair's video and music tokens can go.
    """
    n_valid = mask.sum(1)
    length = max(int(n_valid.max()), 1)
    if length == mask.shape[1] and bool(mask[:, :length].all()):
        return tokens, mask
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :length]
    packed = torch.gather(tokens, 1, order[:, :, None].expand(-1, -1, tokens.shape[-1]))
    return packed, torch.arange(length, device=mask.device)[None] < n_valid[:, None]


def pool_windows(keys: Tensor, mask: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Average every ``factor`` consecutive windows (made-plus multi-scale matching).

    keys [N, S, d], mask [N, S] bool -> [N, ceil(S / factor), d], [N, ceil(S / factor)].
    Groups start at window 0, so trimming trailing padding never changes a group; a
    group averages its valid windows only and is valid when any of them is.
    """
    if factor == 1:
        return keys, mask
    n, length, dim = keys.shape
    groups = -(-length // factor)
    missing = groups * factor - length
    keep = mask.to(keys.dtype)
    if missing:
        keys = F.pad(keys, (0, 0, 0, missing))
        keep = F.pad(keep, (0, missing))
    keep = keep.view(n, groups, factor)
    summed = (keys.view(n, groups, factor, dim) * keep[..., None]).sum(2)
    count = keep.sum(2)
    return summed / count.clamp(min=1.0)[..., None], count > 0


def known_width(frame_mask: Tensor, max_music_seconds: float) -> Tensor:
    """The cut's normalised width from what inference knows: the video's length.

    Frames are sampled at 1 fps from t = 0 (frame i exists iff i <= duration), so a video
    with n valid frames lasts between n - 1 and n seconds: n - 0.5 is the unbiased guess
    (videos over 50 s are capped at 49.5 s). frame_mask [B, F] -> width [B] (float32).
    """
    seconds = (frame_mask.float().sum(1) - 0.5).clamp(min=0.5)
    return seconds / max_music_seconds


DURATION_FREQUENCIES = 8  # duration_features: sin and cos of k * pi * (length / longest), k = 1..8


def duration_features(frame_mask: Tensor, n_frames: int) -> Tensor:
    """The video's length as Fourier features: frame_mask [B, F] -> [B, 2 * DURATION_FREQUENCIES].

    The length is the share of the model's ``n_frames`` that are valid (1 fps: the duration in
    seconds / n_frames, whatever padding the caller's mask has),
    encoded as sin and cos of k pi x for k = 1..8, so that a linear layer can respond to
    lengths ~3 s apart (F = 50) without a hand-picked scale.
    """
    share = (frame_mask.float().sum(1, keepdim=True) / n_frames).clamp(max=1.0)  # [B, 1]
    angles = share * torch.arange(1, DURATION_FREQUENCIES + 1, device=frame_mask.device).float() * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` itself in the forward pass (exactly); its gradient times ``scale`` in the backward (0: a stop)."""
    if scale == 0.0:
        return x.detach()
    return _ScaleGradient.apply(x, scale)


def sinusoid_table(n_positions: int, dim: int) -> Tensor:
    """Fixed transformer positions [n_positions, dim]: sin on even, cos on odd channels."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


def cumulative_sine_positions(mask: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DETR sine encoding of the cumulative valid-token index, normalised to (0, 2*pi].

    mask [B, L] bool -> positions [B, L, dim].
    """
    index = mask.float().cumsum(1)
    index = index / (index[:, -1:] + 1e-6) * (2 * math.pi)
    channel = torch.arange(dim, dtype=torch.float32, device=mask.device)
    freq = temperature ** (2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    angle = index[:, :, None] / freq
    return torch.stack((angle[:, :, 0::2].sin(), angle[:, :, 1::2].cos()), dim=3).flatten(2)


def keep_mask(shape: torch.Size, p: float, device) -> Tensor:
    """Bernoulli(1 - p) keep-mask from 16-bit uniforms, two per 32-bit draw.

    Dropout's random numbers are the largest single cost of a CPU training step;
    ``bernoulli_`` spends one draw per element, this half as many (p exact to 1/65536).
    """
    n = shape.numel()
    words = torch.randint(-(2**31), 2**31, ((n + 1) // 2,), dtype=torch.int32, device=device)
    return words.view(torch.int16)[:n].view(shape) >= int(round(p * 65536)) - 32768


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with :func:`keep_mask`; identity when not training or p == 0."""
    if not training or p == 0.0:
        return x
    return x * (keep_mask(x.shape, p, x.device).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class Attention(nn.Module):
    """Multi-head attention (packed q/k/v projection + output projection) on SDPA.

    ``key_mask`` [B, Lk] bool marks keys that may be attended to.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor | None) -> Tensor:
        w_q, w_k, w_v = self.in_proj.weight.chunk(3)
        b_q, b_k, b_v = self.in_proj.bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        if self.training and self.dropout > 0:
            out = self._attend_with_dropout(q, k, v, attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        batch, _, length, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.n_heads * head_dim))

    def _attend_with_dropout(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
        """Attention with dropout on the weights, spelled out (softmax in float32)."""
        scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = dropout(scores.softmax(-1), self.dropout, True).to(v.dtype)
        return weights @ v

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.n_heads, dim // self.n_heads).transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, activation: str):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.dropout = Dropout(dropout)
        self.activation = F.gelu if activation == "gelu" else F.relu

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(self.activation(self.up(x))))


# ----------------------------------------------------------------------------- unimodal enhancement


class EnhanceBlock(nn.Module):
    """The reference's pre-norm block, whose residual is added to the *normalised* input."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.enhance_dropout)
        self.norm_ffn = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.enhance_dropout, "gelu")

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.norm_attn(x)
        x = x + self.attn(x, x, x, mask)
        x = self.norm_ffn(x)
        return x + self.ffn(x)


class Enhancer(nn.Module):
    """Frozen-encoder tokens [B, L, in_dim] + mask [B, L] -> tokens [B, L, d], pooled [B, d]."""

    positions: Tensor  # a buffer (typed here: nn.Module's __getattr__ says Tensor | Module)

    def __init__(self, in_dim: int, n_positions: int, cfg: ModelConfig):
        super().__init__()
        self.project = nn.Linear(in_dim, cfg.d_model)
        self.register_buffer("positions", sinusoid_table(n_positions, cfg.d_model), persistent=False)
        self.block = EnhanceBlock(cfg)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        keep = mask[:, :, None].to(x.dtype)
        x = self.project(x * keep) + self.positions[: x.shape[1]]
        x = self.out(self.block(x, mask)) * keep
        pooled = x.sum(1) / keep.sum(1).clamp(min=1.0)
        return x, pooled


# ----------------------------------------------------------------------------- X-Pool matching


class XPool(nn.Module):
    """Single-head attention of the video's pooled vector over a track's segment tokens.

    Projections start as the identity with zero bias, as in the reference.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.d_model
        self.norm_in = nn.LayerNorm(dim)  # shared by the video query and the segment keys
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_attn = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, dim)
        self.dropout = Dropout(cfg.xpool_dropout)
        self.norm_out = nn.LayerNorm(dim)
        for layer in (self.q, self.k, self.v, self.o, self.linear):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        # made-plus ``xpool_sharpness``: a learned multiplier of the attention logits (stored as a log).
        self.log_sharpness = (nn.Parameter(torch.tensor(math.log(cfg.xpool_sharpness)))
                              if cfg.xpool_sharpness > 0 else None)

    def keys(self, tokens: Tensor) -> Tensor:
        """Per-track part of the computation, cacheable: [N, S, d] -> [N, S, d]."""
        return self.norm_in(tokens)

    def query(self, video_pooled: Tensor, dtype: torch.dtype) -> Tensor:
        """The video's query folded with the key projection: [B, d] -> [B, d].

        q.(W_k x + b_k) = (W_k^T q).x + q.b_k, and the bias term is the same for every
        segment, so the softmax ignores it.
        """
        query = self.q(self.norm_in(video_pooled.to(dtype))) @ self.k.weight
        if self.log_sharpness is not None:
            query = query * self.log_sharpness.exp().to(dtype)
        return query

    def attention(self, video_pooled: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """The softmax weights of the video's query over each track's segments: [N, B, S].

        Exactly the weights :meth:`forward` pools with (padded segments get 0): the
        "why this track, why here" of a suggestion, one value per 2.5 s window.
        """
        query = self.query(video_pooled, keys.dtype)  # [B, d]
        logits = torch.einsum("bd,nsd->nbs", query.float(), keys.float()) * keys.shape[-1] ** -0.5
        return logits.masked_fill(~mask.bool()[:, None, :], float("-inf")).softmax(dim=-1).nan_to_num(0.0)

    def forward(self, video_pooled: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """video_pooled [B, d], keys [N, S, d], mask [N, S] -> h1 for every pair [N, B, d]."""
        query = self.query(video_pooled, keys.dtype)[None, None].expand(keys.shape[0], 1, -1, -1)
        pooled = F.scaled_dot_product_attention(
            query, keys[:, None], keys[:, None], attn_mask=mask[:, None, None, :], scale=keys.shape[-1] ** -0.5
        )[:, 0]  # one fused pass over the segment tokens: [N, B, d]
        # o(v(x)) as one matrix: it runs once per (track, video) pair.
        weight = self.o.weight @ self.v.weight
        bias = self.o.weight @ self.v.bias + self.o.bias
        pooled = self.norm_attn(F.linear(pooled, weight, bias))
        pooled = pooled + self.dropout(self.linear(pooled))
        return self.norm_out(pooled)


# ----------------------------------------------------------------------------- moment detection


class EncoderLayer(nn.Module):
    """Post-norm DETR encoder layer; positions are added to queries and keys (ReAL's Music-DETR uses it too)."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attn = Attention(dim, n_heads, dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout, "relu")
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        qk = x + pos
        x = self.norm_attn(x + self.dropout(self.attn(qk, qk, x, mask)))
        return self.norm_ffn(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention, cross-attention, FFN (ReAL's Music-DETR uses it too)."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, n_heads, dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, n_heads, dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout, "relu")
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, mask: Tensor) -> Tensor:
        qk = query + query_pos
        query = self.norm_self(query + self.dropout(self.self_attn(qk, qk, query, None)))
        attended = self.cross_attn(query + query_pos, memory + memory_pos, memory, mask)
        query = self.norm_cross(query + self.dropout(attended))
        return self.norm_ffn(query + self.dropout(self.ffn(query)))


POINTER_REACH_WINDOWS = 2  # start_pointer: the regressed offset stays within 2 window steps (5 s) of the pointed start


class Detector(nn.Module):
    """[video; music] tokens -> normalised (centre, width) after every decoder layer [L, B, 2].

    made-plus ``start_pointer``: each layer's query also points at the music window where
    the cut starts (``start_logits`` [L, B, S], a softmax over the encoder's music tokens);
    the start is the pointed window's expected centre plus a regressed offset of at most
    :data:`POINTER_REACH_WINDOWS` steps. Why: one DETR query regressing an absolute
    position in (0, 1) learns slowly (DETR's known slow convergence), while matching the
    video against each window in the encoder's memory is what the encoder is good at.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.d_model
        sizes = (dim, cfg.n_heads, cfg.ffn_dim, cfg.detect_dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*sizes) for _ in range(cfg.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*sizes) for _ in range(cfg.n_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.query_pos = nn.Embedding(1, dim)
        # made-plus ``known_width``: the width is the video's (fed to the query), only the start is regressed.
        self.known_width = cfg.known_width
        self.max_music_seconds = cfg.max_music_seconds
        self.n_frames = cfg.n_frames
        self.n_windows = cfg.n_windows
        # One output per unknown: the start (or the pointer's offset), and the centre or width unless known.
        self.head = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1 if cfg.known_width else 2)
        )
        if cfg.known_width:
            self.width_embed = nn.Linear(1, dim)
        self.pointer = nn.Linear(dim, dim) if cfg.start_pointer else None

    def forward(self, video: VideoTokens, music: MusicTokens) -> tuple[Tensor, Tensor | None]:
        """-> spans [L, B, 2] (float32) and, with ``start_pointer``, start_logits [L, B, S] (else None)."""
        assert music.tokens is not None  # detection needs the tokens (MusicTokens.for_scoring drops them)
        memory, mask = pack_valid_tokens(torch.cat([video.tokens, music.tokens], dim=1),
                                         torch.cat([video.mask, music.mask], dim=1))
        pos = cumulative_sine_positions(mask, memory.shape[-1]).to(memory.dtype)
        for layer in self.encoder:
            memory = layer(memory, pos, mask)
        query = video.pooled[:, None, :]
        query_pos = self.query_pos.weight[None].expand(query.shape[0], -1, -1)
        width = None
        if self.known_width:
            width = known_width(video.mask, self.max_music_seconds)  # [B]
            of_longest = (width * (self.max_music_seconds / self.n_frames))[:, None, None]  # in [0, 1]
            query_pos = query_pos + self.width_embed(of_longest.to(query_pos.dtype))
        outputs = []
        for layer in self.decoder:
            query = layer(query, query_pos, memory, pos, mask)
            outputs.append(self.decoder_norm(query)[:, 0])
        hidden = torch.stack(outputs)  # [L, B, d]
        raw = self.regress(hidden)  # [L, B, 1 or 2]
        start_logits = None if self.pointer is None else self.point(hidden, memory, video.mask, music.mask)
        return self._spans(raw, start_logits, width), start_logits

    def point(self, hidden: Tensor, memory: Tensor, video_mask: Tensor, music_mask: Tensor) -> Tensor:
        """Each layer's query against each music window's encoder token: [L, B, S] float32, -inf where padded.

        ``memory`` is packed (:func:`pack_valid_tokens`): a pair's valid video tokens, then its valid windows in order.
        """
        slot = video_mask.sum(1, keepdim=True) + (music_mask.cumsum(1) - 1).clamp(min=0)  # [B, S]
        slot = slot.clamp(max=memory.shape[1] - 1)
        windows = torch.gather(memory, 1, slot[:, :, None].expand(-1, -1, memory.shape[-1]))  # [B, S, d]
        assert self.pointer is not None  # called with start_pointer only
        with torch.autocast(hidden.device.type, enabled=False):
            query = F.linear(hidden.float(), self.pointer.weight.float(), self.pointer.bias.float())
            logits = torch.einsum("lbd,bsd->lbs", query, windows.float()) * hidden.shape[-1] ** -0.5
        return logits.masked_fill(~music_mask.bool()[None], float("-inf"))

    def _spans(self, raw: Tensor, start_logits: Tensor | None, width: Tensor | None) -> Tensor:
        """The head's raw outputs [L, B, 1 or 2] as (centre, width) [L, B, 2].

        The paper's head gives sigmoid (centre, width). With the width known it gives the
        start; with the pointer, an offset (at most :data:`POINTER_REACH_WINDOWS` steps) from
        the pointed start, the softmax-expected window centre. Any width it is not told comes
        last, through a sigmoid.
        """
        if start_logits is None:
            if width is None:
                return raw.sigmoid()
            start = raw.sigmoid()
        else:
            centres = torch.arange(start_logits.shape[-1], device=raw.device, dtype=torch.float32) / self.n_windows
            pointed = (start_logits.softmax(-1) * centres).sum(-1, keepdim=True)  # [L, B, 1], normalised like spans
            start = pointed + raw[..., :1].tanh() * (POINTER_REACH_WINDOWS / self.n_windows)
        cut_width = raw[..., 1:].sigmoid() if width is None else width[None, :, None].expand_as(start)
        return torch.cat([start + cut_width / 2, cut_width], dim=-1)

    def regress(self, hidden: Tensor) -> Tensor:
        """The span head's raw outputs, always in float32: a bf16 output in (0, 1) scaled by 240 s
        would be quantised to about half a second."""
        with torch.autocast(hidden.device.type, enabled=False):
            x = hidden.float()
            for layer in self.head:
                x = F.linear(x, layer.weight.float(), layer.bias.float()) if isinstance(layer, nn.Linear) else layer(x)
            return x


# ----------------------------------------------------------------------------- the network


class MaDe(nn.Module):
    """Music grounding network: relevance of tracks to a video and the moment to cut.

    Inputs are frozen-encoder features: frames [B, F, video_dim] and windows [N, S, music_dim]
    with 0/1 masks. See the module docstring for the parts.
    """

    querybank: Tensor  # buffers of made-plus (typed here: nn.Module's __getattr__ says Tensor | Module)
    querybank_rows: Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.video_enhancer = Enhancer(cfg.video_dim, cfg.n_frames, cfg)
        self.music_enhancer = Enhancer(cfg.music_dim, cfg.n_windows, cfg)
        self.xpool = XPool(cfg)
        self.detector = Detector(cfg)
        # Temperature of the matching losses (learned, stored as a log); train.py sets its start.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.03)))
        if cfg.n_music_scales > 1:
            # made-plus multi-scale matching: learned fusion weights (softmax), equal at the start.
            self.scale_logits = nn.Parameter(torch.zeros(cfg.n_music_scales))
        if cfg.duration_query:
            # made-plus: zero at the start, so training begins from the paper's network.
            self.duration_embed = nn.Linear(2 * DURATION_FREQUENCIES, cfg.d_model)
            nn.init.zeros_(self.duration_embed.weight)
            nn.init.zeros_(self.duration_embed.bias)
        if cfg.querybank_size > 0:
            # made-plus querybank: pooled vectors of training videos (set_querybank), the first
            # ``querybank_rows`` valid. Buffers, so the checkpoint carries them; zero rows: no effect.
            self.register_buffer("querybank", torch.zeros(cfg.querybank_size, cfg.d_model))
            self.register_buffer("querybank_rows", torch.zeros((), dtype=torch.int64))

    # -- encoding ---------------------------------------------------------------------------

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> VideoTokens:
        """frames [B, F, video_dim], frame_mask [B, F] -> :class:`VideoTokens`.

        Tokens come back trimmed to the batch's last valid frame (F' <= F).
        """
        # The length is read from the full mask: trimming keeps only the batch's longest video's frames.
        length = duration_features(frame_mask.bool(), self.cfg.n_frames) if self.cfg.duration_query else None
        frames, mask = trim_padding(frames, frame_mask.bool())
        tokens, pooled = self.video_enhancer(frames.to(self.dtype), mask)
        if length is not None:
            pooled = pooled + self.duration_embed(length.to(device=pooled.device, dtype=pooled.dtype))
        return VideoTokens(tokens, mask, pooled)

    def encode_music(self, windows: Tensor, window_mask: Tensor, for_search: bool = False) -> MusicTokens:
        """windows [N, S, music_dim], window_mask [N, S] -> :class:`MusicTokens`.

        Tokens come back trimmed to the batch's last valid window (S' <= S). ``for_search``:
        also the tracks' score ``offsets`` (:meth:`score_offsets`), for tracks that will be
        ranked; detection and training do not need them.
        """
        windows, mask = trim_padding(windows, window_mask.bool())
        tokens, pooled = self.music_enhancer(windows.to(self.dtype), mask)
        music = MusicTokens(tokens, mask, pooled, self.xpool.keys(tokens))
        if for_search:
            music.offsets = self.score_offsets(music)
        return music

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype; inputs are cast to it (bf16 inference casts the model once)."""
        return self.video_enhancer.project.weight.dtype

    # -- matching ---------------------------------------------------------------------------

    def similarities(self, video: VideoTokens, music: MusicTokens) -> tuple[Tensor, Tensor]:
        """Cosine similarities [N, B]: to the mean-pooled track, and to the X-Pooled track."""
        v = F.normalize(video.pooled.float(), dim=-1)
        mean_sim = F.normalize(music.pooled.float(), dim=-1) @ v.T
        if self.cfg.n_music_scales > 1:
            return mean_sim, self.multi_scale_similarity(video, music, v)
        h1 = self.xpool(video.pooled, music.keys, music.mask)
        xpool_sim = (F.normalize(h1.float(), dim=-1) * v[None]).sum(-1)
        return mean_sim, xpool_sim

    def multi_scale_similarity(self, video: VideoTokens, music: MusicTokens, v: Tensor) -> Tensor:
        """made-plus: X-Pool over the windows pooled x1, x2, x4, ..., fused with learned weights.

        Each scale's keys are the cached keys averaged in groups (:func:`pool_windows`), so
        an index cache needs nothing new. v [B, d] normalised -> [N, B].
        """
        weights = self.scale_logits.float().softmax(0)
        fused = 0.0
        for scale, weight in enumerate(weights):
            keys, mask = pool_windows(music.keys, music.mask, 2**scale)
            h1 = self.xpool(video.pooled, keys, mask)
            fused = fused + weight * (F.normalize(h1.float(), dim=-1) * v[None]).sum(-1)
        return fused  # type: ignore[return-value]  # a Tensor: n_music_scales > 1 here, the loop runs

    def score_pairs(self, video: VideoTokens, music: MusicTokens) -> Tensor:
        """Relevance p_s of every (track, video) pair in one pass: [N, B]; minus the tracks'
        ``music.offsets`` when they have them (made-plus querybank normalisation)."""
        mean_sim, xpool_sim = self.similarities(video, music)
        if music.offsets is None:
            return mean_sim + xpool_sim
        return mean_sim + xpool_sim - music.offsets.to(mean_sim.dtype)[:, None]

    # -- querybank normalisation (made-plus) ---------------------------------------------------

    def set_querybank(self, pooled: Tensor) -> None:
        """Keep the pooled vectors [n, d] of training videos (``encode_video(...).pooled``) as the
        querybank: the first ``querybank_size`` of them. A model without a querybank refuses."""
        if self.cfg.querybank_size <= 0:
            raise ValueError("this model has no querybank (querybank_size = 0)")
        rows = min(int(pooled.shape[0]), self.cfg.querybank_size)
        with torch.no_grad():
            self.querybank.zero_()
            self.querybank[:rows] = pooled[:rows].to(self.querybank.dtype)
            self.querybank_rows.fill_(rows)

    @property
    def has_score_offsets(self) -> bool:
        """Whether :meth:`score_offsets` gives offsets (a filled querybank), so caches keep them."""
        return self.cfg.querybank_size > 0 and int(self.querybank_rows) > 0

    def score_offsets(self, music: MusicTokens) -> Tensor | None:
        """What the querybank normalisation subtracts from each track's score: float32 [N], or None
        without a (filled) querybank.

        ``weight / beta * log mean_q exp(beta * p_s(q, track))`` over the querybank's videos q:
        a soft maximum of the track's similarity to training videos, 0 for a track no more
        similar to them than the rest. It depends on the track alone (cacheable), and costs one
        :meth:`similarities` of the track against every querybank video.
        """
        if not self.has_score_offsets:
            return None
        rows = int(self.querybank_rows)
        bank = self.querybank[:rows].to(self.dtype)
        n_tracks = music.keys.shape[0]
        chunk = max(1, QUERYBANK_CHUNK_ELEMENTS // max(1, n_tracks * music.keys.shape[-1]))
        sims = []
        for begin in range(0, rows, chunk):
            queries = bank[begin:begin + chunk]
            # no tokens, no mask: similarities() reads a VideoTokens' pooled vectors only
            mean_sim, xpool_sim = self.similarities(VideoTokens(None, None, queries), music)  # type: ignore[arg-type]
            sims.append((mean_sim + xpool_sim).float())
        beta, weight = self.cfg.querybank_beta, self.cfg.querybank_weight
        return weight / beta * (torch.logsumexp(beta * torch.cat(sims, dim=1), dim=1) - math.log(rows))

    def window_relevance(self, video: VideoTokens, music: MusicTokens) -> Tensor:
        """How much each music window counts for each pair's match: [N, B, S] in [0, 1].

        The matching attention (X-Pool) of the video over the track's windows, scaled so
        the track's most attended window is 1; padded windows are 0.
        """
        weights = self.xpool.attention(video.pooled, music.keys, music.mask)
        return weights / weights.amax(dim=-1, keepdim=True).clamp_min(1e-12)

    # -- detection --------------------------------------------------------------------------

    def detect_all_layers(self, video: VideoTokens, music: MusicTokens) -> Tensor:
        """One-to-one pairs (B == N) -> normalised (centre, width) after every decoder layer [L, B, 2]."""
        return self._detect(video, music)[0]

    def _detect(self, video: VideoTokens, music: MusicTokens) -> tuple[Tensor, Tensor | None]:
        if music.tokens is None:
            raise ValueError("detection needs the music tokens; encode the tracks with encode_music")
        return self.detector(video, music)

    def detect(self, video: VideoTokens, music: MusicTokens) -> Tensor:
        """One-to-one pairs (B == N) -> normalised (centre, width) of the final layer [B, 2]."""
        return self.detect_all_layers(video, music)[-1]

    def ground_pairs(self, frames: Tensor, frame_mask: Tensor, windows: Tensor, window_mask: Tensor,
                     chunk_size: int = 64) -> Tensor:
        """Single-music grounding of many matched pairs: normalised (centre, width) [B, 2].

        Pairs are processed in chunks of similar length (longest video + track first), so
        each chunk carries little padding; the result is the same as one big :meth:`detect`.
        """
        n_tokens = frame_mask.sum(1) + window_mask.sum(1)
        order = torch.argsort(n_tokens, descending=True, stable=True)
        spans = torch.empty(len(order), 2, device=frames.device)
        for begin in range(0, len(order), chunk_size):
            rows = order[begin:begin + chunk_size]
            video = self.encode_video(frames[rows], frame_mask[rows])
            music = self.encode_music(windows[rows], window_mask[rows])
            spans[rows] = self.detect(video, music)
        return spans

    def spans_to_seconds(self, spans: Tensor, track_durations: Tensor) -> Tensor:
        """(centre, width) [B, 2] normalised by max_music_seconds -> (start, end) seconds [B, 2],
        clamped to [0, track duration]."""
        scale = self.cfg.max_music_seconds
        centre, width = spans[:, 0] * scale, spans[:, 1] * scale
        limit = track_durations.to(spans.dtype)
        start = torch.minimum((centre - width / 2).clamp(min=0.0), limit)
        end = torch.minimum((centre + width / 2).clamp(min=0.0), limit)
        return torch.stack([start, end], dim=-1)

    # -- training ---------------------------------------------------------------------------

    def forward(self, frames: Tensor, frame_mask: Tensor, windows: Tensor, window_mask: Tensor,
                detect_grad_scale: float = 1.0) -> dict[str, Tensor]:
        """A training batch of B matched pairs.

        Returns ``mean_sim`` and ``xpool_sim`` [B_music, B_video] over all pairs of the batch,
        ``spans`` [L, B, 2], the moment of each matched pair after every decoder layer, and
        with ``start_pointer`` its ``start_logits`` [L, B, S] over the track's windows.
        ``detect_grad_scale`` (made-plus, ``TrainConfig``): the gradient that detection sends
        back into the enhancers is multiplied by it (0: detection trains only its own weights);
        the outputs are the same whatever its value.
        """
        video = self.encode_video(frames, frame_mask)
        music = self.encode_music(windows, window_mask)
        mean_sim, xpool_sim = self.similarities(video, music)
        if detect_grad_scale != 1.0:
            # encode_video/encode_music keep the tokens here; only search drops them
            assert video.tokens is not None and music.tokens is not None
            video = VideoTokens(scale_gradient(video.tokens, detect_grad_scale), video.mask,
                                scale_gradient(video.pooled, detect_grad_scale))
            music = replace(music, tokens=scale_gradient(music.tokens, detect_grad_scale))
        spans, start_logits = self._detect(video, music)
        out = {"mean_sim": mean_sim, "xpool_sim": xpool_sim, "spans": spans}
        if start_logits is not None:
            out["start_logits"] = start_logits
        return out

    # -- bookkeeping ------------------------------------------------------------------------

    def learned_scalars(self) -> dict[str, float]:
        """The learned scalars as they act, for training curves: ``logit_scale`` (the matching
        losses' inverse temperature), ``xpool_sharpness`` and the multi-scale fusion weights
        (``scale_weight_x1``, ``_x2``, ...) where the switches have them."""
        with torch.no_grad():
            out = {"logit_scale": float(self.logit_scale.float().exp())}
            if self.xpool.log_sharpness is not None:
                out["xpool_sharpness"] = float(self.xpool.log_sharpness.float().exp())
            if self.cfg.n_music_scales > 1:
                for scale, weight in enumerate(self.scale_logits.float().softmax(0).tolist()):
                    out[f"scale_weight_x{2 ** scale}"] = weight
        return out

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per module: enhancement, matching, detection, total."""
        def count(*modules: nn.Module) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        counts = {
            "enhancement": count(self.video_enhancer, self.music_enhancer)
            + (count(self.duration_embed) if hasattr(self, "duration_embed") else 0),
            "matching": count(self.xpool) + (self.scale_logits.numel() if hasattr(self, "scale_logits") else 0),
            "detection": count(self.detector),
        }
        counts["total"] = sum(counts.values())
        return counts
