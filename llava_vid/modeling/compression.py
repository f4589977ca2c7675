"""LLaMA-VID token compression: each video frame becomes one context token plus a few content tokens.

Per frame (Li et al., 2023, "LLaMA-VID: An Image is Worth 2 Tokens in Large Language Models"):

* **context** — a Q-Former reads the user's instruction together with learned query tokens and
  cross-attends to the frame's patch features ``X``; its query outputs, projected to the vision
  width, are text-guided queries ``Q``. With keys ``K = Linear(X)`` and the patch features
  themselves as values, the context token is
  ``Linear(mean over queries of softmax(Q·Kᵀ/√d)·X)`` (d = vision width), one vector at LLM width.
  :func:`context_attention` is the parameter-free core; :class:`ContextCompressor` the learned half.
* **content** — the patch features average-pooled to a ``g×g`` grid (``g = 1``: one mean token);
  :func:`pool_content`. The model sends these through its ordinary projector, not this module.

The model orders them context first, then content, frame after frame.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F
from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel
from transformers import initialization as init


def context_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Mean over queries of ``softmax(Q·Kᵀ/√D)·V``, frame by frame.

    Args:
        queries: ``(F, Q, D)`` text-guided queries.
        keys: ``(F, P, D)`` one key per patch.
        values: ``(F, P, D_v)`` one value per patch (LLaMA-VID: the patch features themselves, so
            ``D_v = D``; another width is allowed).

    Returns:
        ``(F, D_v)``. The mean over queries commutes with ``·V``, so the attention weights are averaged
        first and one ``(1, P) @ (P, D_v)`` product is done per frame. The softmax runs in float32 so
        bf16/fp16 inputs do not saturate; the result has ``values``' dtype.
    """
    if queries.ndim != 3 or keys.ndim != 3 or values.ndim != 3:
        raise ValueError(
            f"context_attention takes (F, Q, D), (F, P, D), (F, P, D) tensors, got shapes "
            f"{tuple(queries.shape)}, {tuple(keys.shape)}, {tuple(values.shape)}"
        )
    if keys.shape[:2] != values.shape[:2] or queries.shape[0] != keys.shape[0] or queries.shape[2] != keys.shape[2]:
        raise ValueError(
            f"context_attention: queries {tuple(queries.shape)}, keys {tuple(keys.shape)} and values "
            f"{tuple(values.shape)} disagree (need (F, Q, D), (F, P, D), (F, P, D_v))"
        )
    width = queries.shape[-1]
    scores = torch.einsum("fqd,fpd->fqp", queries, keys) / math.sqrt(width)  # (F, Q, P)
    weights = scores.float().softmax(dim=-1).mean(dim=1, keepdim=True)  # (F, 1, P)
    return torch.bmm(weights.to(values.dtype), values).squeeze(1)  # (F, D_v)


def pool_content(features: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool each frame's patch grid to ``grid × grid`` tokens.

    Args:
        features: ``(F, P, D)`` patch features, ``P = side²`` patches in row-major order (no CLS token).
        grid: output side, ``1 ≤ grid ≤ side``. Adaptive average pooling: when ``grid`` does not divide
            ``side`` the pooling windows overlap by a patch, as in ``torch.nn.AdaptiveAvgPool2d``.

    Returns:
        ``(F, grid * grid, D)``, row-major. ``grid = 1`` is the mean over patches; ``grid = side``
        returns the features unchanged.
    """
    if features.ndim != 3:
        raise ValueError(f"pool_content takes (F, P, D) features, got shape {tuple(features.shape)}")
    patches = features.shape[1]
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"pool_content needs a square patch grid, but {patches} patches is not a square number")
    if not 1 <= grid <= side:
        raise ValueError(f"content grid={grid} must be between 1 and the patch grid side={side}")
    if grid == side:
        return features
    maps = rearrange(features, "f (h w) d -> f d h w", h=side, w=side)  # (F, D, side, side)
    pooled = F.adaptive_avg_pool2d(maps, grid)  # (F, D, grid, grid)
    return rearrange(pooled, "f d h w -> f (h w) d")  # (F, grid*grid, D)


class ContextCompressor(nn.Module):
    """The learned half of LLaMA-VID: one text-guided context token per frame.

    Parameters:

    * ``qformer`` — an InstructBLIP Q-Former (``transformers.InstructBlipQFormerModel``): learned query
      tokens and the instruction tokens self-attend; the queries cross-attend to the frame's features.
    * ``query_tokens`` — ``(1, num_queries, qformer hidden)`` learned queries.
    * ``query_projector`` (Q-Former hidden → vision width), ``key_projector`` (vision width → vision
      width) and ``context_projector`` (vision width → LLM width).

    The frame features go to the Q-Former as they come (the vision tower's selected hidden state).
    InstructBLIP instead feeds its vision model's output after ``post_layernorm``, and LLaMA-VID adds a
    LayerNorm (``vlm_att_ln``) there; a pretrained Q-Former loaded into this module therefore sees
    un-normalised features and is expected to adapt in training.

    Initialisation: ``__init__`` ends with :meth:`reset_parameters`, which draws ``query_tokens`` from
    ``normal(0, qformer_config.initializer_range)`` like InstructBLIP/BLIP-2 training code does (the
    transformers port zero-fills them, but only ever loads pretrained values over that). The Linear
    layers keep torch's default and the Q-Former initialises itself (it is a ``PreTrainedModel``). Inside
    a transformers ``PreTrainedModel``, ``from_pretrained`` may build everything on the meta device and
    re-initialise only missing weights through ``_init_weights``: Linear layers and the Q-Former (which
    dispatches to its own ``_init_weights``) are covered by transformers, but a bare ``nn.Parameter`` is
    not, so the enclosing model's ``_init_weights`` must call :meth:`reset_parameters` on this module.
    :meth:`reset_parameters` touches only ``query_tokens`` and uses transformers' guarded init, so it
    never overwrites a loaded value.
    """

    def __init__(
        self,
        qformer_config: InstructBlipQFormerConfig,
        vision_width: int,
        text_width: int,
        num_queries: int = 32,
    ) -> None:
        super().__init__()
        if qformer_config.encoder_hidden_size != vision_width:
            raise ValueError(
                f"the Q-Former cross-attends to features of width encoder_hidden_size="
                f"{qformer_config.encoder_hidden_size}, but the vision tower gives width {vision_width}"
            )
        if num_queries < 1:
            raise ValueError(f"num_queries must be at least 1, got {num_queries}")
        self.num_queries = num_queries
        self.vision_width = vision_width
        self.initializer_range = qformer_config.initializer_range
        self.max_instruction_length = qformer_config.max_position_embeddings

        self.qformer = InstructBlipQFormerModel(qformer_config)
        hidden = qformer_config.hidden_size
        self.query_tokens = nn.Parameter(torch.empty(1, num_queries, hidden))  # (1, Q, H)
        self.query_projector = nn.Linear(hidden, vision_width)
        self.key_projector = nn.Linear(vision_width, vision_width)
        self.context_projector = nn.Linear(vision_width, text_width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)draw ``query_tokens``; a no-op on a value transformers marked as loaded."""
        init.normal_(self.query_tokens, mean=0.0, std=self.initializer_range)

    def forward(
        self,
        frame_features: torch.Tensor,
        instruction_ids: torch.Tensor,
        instruction_mask: torch.Tensor,
        *,
        chunk_size: int = 256,
    ) -> torch.Tensor:
        """One context token per frame.

        Args:
            frame_features: ``(F, P, D_v)`` patch features of every frame of the batch.
            instruction_ids: ``(F, L)`` Q-Former token ids of each frame's instruction (the caller repeats
                a video's instruction for each of its frames).
            instruction_mask: ``(F, L)``, 1 for real tokens, 0 for padding. Left or right padding give
                the same result: position ids count real tokens only.
            chunk_size: at most this many frames per Q-Former call, so activation memory stays bounded
                for hour-long videos.

        Returns:
            ``(F, 1, D_text)``.
        """
        if frame_features.ndim != 3 or frame_features.shape[-1] != self.vision_width:
            raise ValueError(
                f"frame_features must be (F, P, {self.vision_width}), got shape {tuple(frame_features.shape)}"
            )
        if instruction_ids.ndim != 2 or instruction_ids.shape[0] != frame_features.shape[0]:
            raise ValueError(
                f"instruction_ids must be (F, L) with F={frame_features.shape[0]} frames, "
                f"got shape {tuple(instruction_ids.shape)}"
            )
        if instruction_mask.shape != instruction_ids.shape:
            raise ValueError(
                f"instruction_mask shape {tuple(instruction_mask.shape)} differs from instruction_ids shape "
                f"{tuple(instruction_ids.shape)}"
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        instruction_mask = instruction_mask.long()
        longest = int(instruction_mask.sum(dim=1).max()) if instruction_mask.numel() else 0
        if longest > self.max_instruction_length:
            raise ValueError(
                f"an instruction has {longest} tokens, but the Q-Former has only "
                f"max_position_embeddings={self.max_instruction_length} positions"
            )
        # Count positions over real tokens only, so left padding does not shift the text.
        position_ids = (instruction_mask.cumsum(dim=1) - 1).clamp(min=0)  # (F, L)

        dtype = self.key_projector.weight.dtype
        frame_features = frame_features.to(dtype)
        chunks = []
        for start in range(0, frame_features.shape[0], chunk_size):
            stop = start + chunk_size
            chunks.append(
                self._compress(
                    frame_features[start:stop], instruction_ids[start:stop],
                    instruction_mask[start:stop], position_ids[start:stop],
                )
            )
        return torch.cat(chunks)[:, None]  # (F, 1, D_text)

    def _compress(
        self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """``(n, P, D_v)`` features of one chunk → ``(n, D_text)`` context tokens."""
        frames = features.shape[0]
        query_tokens = self.query_tokens.expand(frames, -1, -1)  # (n, Q, H)
        # The Q-Former's self-attention mask spans [queries, instruction]; queries are never padding.
        # (transformers silently drops a text-only mask when it is all ones, so pass the full one.)
        query_mask = mask.new_ones(frames, self.num_queries)
        outputs = self.qformer(
            input_ids=ids,
            attention_mask=torch.cat([query_mask, mask], dim=1),  # (n, Q + L)
            position_ids=position_ids,
            query_embeds=query_tokens,
            encoder_hidden_states=features,
        )
        query_outputs = outputs.last_hidden_state[:, : self.num_queries]  # (n, Q, H): instruction outputs dropped
        queries = self.query_projector(query_outputs)  # (n, Q, D_v)
        keys = self.key_projector(features)  # (n, P, D_v)
        context = context_attention(queries, keys, features)  # (n, D_v)
        return self.context_projector(context)  # (n, D_text)
