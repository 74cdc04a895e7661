"""ReAL: the two-stage design before MaDe (spec section 6, seed 003), on MGSV-EC's features.

Two networks with their own weights, trained separately, held by one :class:`Real`:

- :class:`RetrievalModel` (stage 1): a Linear to d per modality, ONE masked transformer
  block shared by video and music (:class:`ContextModel`), mean pooling; relevance is the
  cosine of the pooled vectors (symmetric InfoNCE, learnable temperature, every video of
  the same track in a batch a positive).
- :class:`MusicDETR` (stage 2): the same context modelling (its own weights) without
  pooling; cross-attention layers with the music tokens as queries and the video tokens as
  keys/values; a self-attention encoder over the fused music; a DETR decoder whose Q
  queries are the mean-pooled video embedding (content) plus learned embeddings (position);
  heads: a 3-layer span MLP, a foreground/background class head, and ``f_embed``, a moment
  embedding (plus the pooled music embedding as a shortcut) aligned with the video.

:class:`Real` answers the same inference calls as :class:`~mgsv_cli.models.made.MaDe`
(``encode_video``, ``encode_music``, ``score_pairs``, ``detect``, ``window_relevance``,
``spans_to_seconds``) with MaDe's token bundles: ``VideoTokens.tokens``/``MusicTokens.tokens``
are Music-DETR's context tokens, ``.pooled`` the retrieval vectors, ``MusicTokens.keys``
the retrieval model's per-window tokens (what an index cache keeps; scoring needs only
``pooled``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgsv_cli.models.made import (
    Attention,
    DecoderLayer,
    Dropout,
    EncoderLayer,
    FeedForward,
    MusicTokens,
    VideoTokens,
    cumulative_sine_positions,
    sinusoid_table,
    trim_padding,
)
from mgsv_cli.models.variants import RealModelConfig

FOREGROUND = 0  # class index of a query matched to the ground-truth moment; 1 = background


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid tokens: [B, L, d], [B, L] bool -> [B, d]."""
    keep = mask[:, :, None].to(tokens.dtype)
    return (tokens * keep).sum(1) / keep.sum(1).clamp(min=1.0)


# ----------------------------------------------------------------------------- context modelling


class ContextBlock(nn.Module):
    """One pre-norm transformer block (self-attention + GELU FFN) with a key-padding mask."""

    def __init__(self, cfg: RealModelConfig):
        super().__init__()
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm_ffn = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout, "gelu")
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm_attn(x)
        x = x + self.dropout(self.attn(h, h, h, mask))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class ContextModel(nn.Module):
    """Per-modality Linear to d + fixed sinusoidal positions, then ONE block shared by both
    modalities (the paper's parameter sharing); padded tokens are zeroed."""

    positions: Tensor  # a buffer (typed here: nn.Module's __getattr__ says Tensor | Module)

    def __init__(self, cfg: RealModelConfig):
        super().__init__()
        self.video_proj = nn.Linear(cfg.video_dim, cfg.d_model)
        self.music_proj = nn.Linear(cfg.music_dim, cfg.d_model)
        self.register_buffer("positions", sinusoid_table(max(cfg.n_frames, cfg.n_windows), cfg.d_model),
                             persistent=False)
        self.block = ContextBlock(cfg)
        self.norm = nn.LayerNorm(cfg.d_model)

    def _encode(self, proj: nn.Linear, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask[:, :, None].to(x.dtype)
        x = proj(x * keep) + self.positions[: x.shape[1]].to(x.dtype)
        return self.norm(self.block(x, mask)) * keep

    def video(self, frames: Tensor, mask: Tensor) -> Tensor:
        """frames [B, F, video_dim], mask [B, F] bool -> tokens [B, F, d]."""
        return self._encode(self.video_proj, frames, mask)

    def music(self, windows: Tensor, mask: Tensor) -> Tensor:
        """windows [N, S, music_dim], mask [N, S] bool -> tokens [N, S, d]."""
        return self._encode(self.music_proj, windows, mask)


# ----------------------------------------------------------------------------- stage 1: retrieval


class RetrievalModel(nn.Module):
    """Context modelling + mean pooling; ``log_scale`` is the learned 1 / temperature (as a log)."""

    def __init__(self, cfg: RealModelConfig):
        super().__init__()
        self.context = ContextModel(cfg)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def video(self, frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> per-frame tokens [B, F, d], pooled [B, d]."""
        tokens = self.context.video(frames, mask)
        return tokens, masked_mean(tokens, mask)

    def music(self, windows: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> per-window tokens [N, S, d], pooled [N, d]."""
        tokens = self.context.music(windows, mask)
        return tokens, masked_mean(tokens, mask)


# ----------------------------------------------------------------------------- stage 2: Music-DETR


class FusionLayer(nn.Module):
    """Post-norm cross-attention layer: music tokens (queries) attend to the video tokens."""

    def __init__(self, cfg: RealModelConfig):
        super().__init__()
        self.cross_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout, "relu")
        self.norm_ffn = nn.LayerNorm(cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, music: Tensor, music_pos: Tensor, video: Tensor, video_pos: Tensor, video_mask: Tensor) -> Tensor:
        attended = self.cross_attn(music + music_pos, video + video_pos, video, video_mask)
        music = self.norm_attn(music + self.dropout(attended))
        return self.norm_ffn(music + self.dropout(self.ffn(music)))


class MusicDETR(nn.Module):
    """Video-guided moment localisation in one track (stage 2)."""

    def __init__(self, cfg: RealModelConfig):
        super().__init__()
        dim = cfg.d_model
        self.context = ContextModel(cfg)
        self.fusion = nn.ModuleList(FusionLayer(cfg) for _ in range(cfg.n_fusion_layers))
        sizes = (dim, cfg.n_heads, cfg.ffn_dim, cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*sizes) for _ in range(cfg.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*sizes) for _ in range(cfg.n_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.query_embed = nn.Embedding(cfg.n_queries, dim)
        self.span_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                       nn.Linear(dim, 2))
        self.class_head = nn.Linear(dim, 2)  # foreground / background logits
        self.f_embed = nn.Linear(dim, dim)  # moment embedding, aligned with the video

    def forward(self, video: Tensor, video_mask: Tensor, music: Tensor, music_mask: Tensor) -> dict[str, Tensor]:
        """Context tokens video [B, F, d] + mask, music [B, S, d] + mask (pairs, B == N) ->

        ``spans`` [B, Q, 2] normalised (centre, width) float32, ``logits`` [B, Q, 2] float32,
        ``moment_embed`` [B, Q, d], ``video_embed`` [B, d] (the video before the fusion).
        """
        video_embed = masked_mean(video, video_mask)
        video_pos = cumulative_sine_positions(video_mask, video.shape[-1]).to(video.dtype)
        music_pos = cumulative_sine_positions(music_mask, music.shape[-1]).to(music.dtype)
        memory = music
        for layer in self.fusion:
            memory = layer(memory, music_pos, video, video_pos, video_mask)
        for layer in self.encoder:
            memory = layer(memory, music_pos, music_mask)
        n_queries = self.query_embed.weight.shape[0]
        query = video_embed[:, None, :].expand(-1, n_queries, -1)  # the video as every query's content
        query_pos = self.query_embed.weight[None].to(query.dtype).expand(query.shape[0], -1, -1)
        for layer in self.decoder:
            query = layer(query, query_pos, memory, music_pos, music_mask)
        hidden = self.decoder_norm(query)
        # the music shortcut: the pooled music embedding added to every moment embedding
        moment_embed = self.f_embed(hidden) + masked_mean(music, music_mask)[:, None, :]
        return {"spans": _float32_mlp(self.span_head, hidden).sigmoid(),
                "logits": self.class_head(hidden).float(),
                "moment_embed": moment_embed, "video_embed": video_embed}


def _float32_mlp(mlp: nn.Sequential, hidden: Tensor) -> Tensor:
    """The span MLP in float32 (a bf16 fraction of 240 s would be quantised to ~0.5 s)."""
    with torch.autocast(hidden.device.type, enabled=False):
        x = hidden.float()
        for layer in mlp:
            x = F.linear(x, layer.weight.float(), layer.bias.float()) if isinstance(layer, nn.Linear) else layer(x)
        return x


def best_query(out: dict[str, Tensor]) -> Tensor:
    """The span of each pair's most confident query (highest foreground probability): [B, 2]."""
    foreground = out["logits"].softmax(-1)[..., FOREGROUND]  # [B, Q]
    pick = foreground.argmax(-1)
    return out["spans"][torch.arange(len(pick), device=pick.device), pick]


# ----------------------------------------------------------------------------- the network


class Real(nn.Module):
    """ReAL: retrieval model + Music-DETR, with MaDe's inference interface.

    Weights are named ``retrieval.*`` and ``localisation.*``; each stage trains on its own.
    """

    family = "real"

    def __init__(self, cfg: RealModelConfig):
        super().__init__()
        self.cfg = cfg
        self.retrieval = RetrievalModel(cfg)
        self.localisation = MusicDETR(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.retrieval.context.video_proj.weight.dtype

    # -- encoding ---------------------------------------------------------------------------

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> VideoTokens:
        """frames [B, F, video_dim], mask [B, F] -> VideoTokens: Music-DETR's context tokens
        [B, F', d] (trimmed to the last valid frame) and the retrieval vector ``pooled`` [B, d]."""
        frames, mask = trim_padding(frames.to(self.dtype), frame_mask.bool())
        _, pooled = self.retrieval.video(frames, mask)
        return VideoTokens(self.localisation.context.video(frames, mask), mask, pooled)

    has_score_offsets = False  # MaDe's made-plus querybank normalisation; ReAL scores without

    def encode_music(self, windows: Tensor, window_mask: Tensor, for_search: bool = False) -> MusicTokens:
        """windows [N, S, music_dim], mask [N, S] -> MusicTokens: Music-DETR's context tokens,
        the retrieval vector ``pooled`` [N, d] and the retrieval window tokens ``keys`` [N, S', d].
        ``for_search`` is MaDe's (score offsets); ReAL's scores have none."""
        windows, mask = trim_padding(windows.to(self.dtype), window_mask.bool())
        keys, pooled = self.retrieval.music(windows, mask)
        return MusicTokens(self.localisation.context.music(windows, mask), mask, pooled, keys)

    # -- retrieval --------------------------------------------------------------------------

    def score_pairs(self, video: VideoTokens, music: MusicTokens) -> Tensor:
        """Relevance of every (track, video) pair: cosine of the retrieval vectors [N, B]."""
        v = F.normalize(video.pooled.float(), dim=-1)
        return F.normalize(music.pooled.float(), dim=-1) @ v.T

    def window_relevance(self, video: VideoTokens, music: MusicTokens) -> Tensor:
        """[N, B, S] in [0, 1]: cosine of each retrieval window token to the video's retrieval
        vector, negatives as 0, scaled so each track's best window is 1; padding 0."""
        v = F.normalize(video.pooled.float(), dim=-1)
        cos = torch.einsum("nsd,bd->nbs", F.normalize(music.keys.float(), dim=-1), v).clamp(min=0.0)
        cos = cos * music.mask[:, None, :].to(cos.dtype)
        return cos / cos.amax(dim=-1, keepdim=True).clamp_min(1e-12)

    # -- localisation -----------------------------------------------------------------------

    def localise(self, video: VideoTokens, music: MusicTokens) -> dict[str, Tensor]:
        """Music-DETR on one-to-one pairs (B == N); see :meth:`MusicDETR.forward`."""
        if music.tokens is None:
            raise ValueError("localisation needs the music tokens; encode the tracks with encode_music")
        return self.localisation(video.tokens, video.mask, music.tokens, music.mask)

    def detect(self, video: VideoTokens, music: MusicTokens) -> Tensor:
        """One-to-one pairs -> normalised (centre, width) of the most confident query [B, 2]."""
        return best_query(self.localise(video, music))

    def spans_to_seconds(self, spans: Tensor, track_durations: Tensor) -> Tensor:
        """(centre, width) [B, 2] / max_music_seconds -> (start, end) seconds, clamped to the track."""
        scale = self.cfg.max_music_seconds
        centre, width = spans[:, 0] * scale, spans[:, 1] * scale
        limit = track_durations.to(spans.dtype)
        start = torch.minimum((centre - width / 2).clamp(min=0.0), limit)
        end = torch.minimum((centre + width / 2).clamp(min=0.0), limit)
        return torch.stack([start, end], dim=-1)

    # -- training ---------------------------------------------------------------------------

    def retrieval_similarities(self, frames: Tensor, frame_mask: Tensor, windows: Tensor,
                               window_mask: Tensor) -> Tensor:
        """Stage 1 on a batch of matched pairs: cosine [B_music, B_video]."""
        frames, fmask = trim_padding(frames, frame_mask.bool())
        windows, wmask = trim_padding(windows, window_mask.bool())
        _, v = self.retrieval.video(frames, fmask)
        _, m = self.retrieval.music(windows, wmask)
        return F.normalize(m.float(), dim=-1) @ F.normalize(v.float(), dim=-1).T

    def localisation_outputs(self, frames: Tensor, frame_mask: Tensor, windows: Tensor,
                             window_mask: Tensor) -> dict[str, Tensor]:
        """Stage 2 on a batch of matched pairs: :meth:`MusicDETR.forward`'s outputs."""
        frames, fmask = trim_padding(frames, frame_mask.bool())
        windows, wmask = trim_padding(windows, window_mask.bool())
        context = self.localisation.context
        return self.localisation(context.video(frames, fmask), fmask, context.music(windows, wmask), wmask)

    def stage(self, name: str) -> nn.Module:
        """The sub-network one training stage updates (``retrieval`` or ``localisation``)."""
        if name not in ("retrieval", "localisation"):
            raise ValueError(f"unknown ReAL stage {name!r}")
        return getattr(self, name)

    # -- bookkeeping ------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per stage and in total."""
        counts = {name: sum(p.numel() for p in self.stage(name).parameters())
                  for name in ("retrieval", "localisation")}
        counts["total"] = sum(counts.values())
        return counts
