"""The message-passing network over the mini-batch, and the full model (backbones: ``backbones.py``).

The method (Seidenschwarz, Elezi, Leal-Taixé, ICML 2021): a batch of N images gives N embeddings.
Treat them as the nodes of a fully connected graph (with self-loops) and let every node attend to
every other node with multi-head dot-product attention, a transformer block over the *batch*:

    q_i = W_q x_i + b_q,  k_j = W_k x_j + b_k,  v_j = W_v x_j + b_v    (per head h, d = dim / heads)
    s_ij = q_i · k_j / sqrt(d)                                          (attention score)
    a_ij = exp(s_ij) / sum_j' exp(s_ij')                                (softmax over the whole batch)
    m_i  = W_o concat_h( sum_j a_ij v_j ) + b_o                         (message received by i)
    x_i <- LayerNorm(x_i + Dropout(m_i))                                (residual 1: the messages)
    x_i <- LayerNorm(x_i + Dropout(W_2 Dropout(ReLU(W_1 x_i))))         (residual 2: feed-forward)

:meth:`BatchAttention.forward` is the first four lines (:func:`attention_weights` the second and
third), :class:`FeedForward` the last one, and :meth:`MessagePassingLayer.forward` the two residual
lines. A classifier on the refined embeddings gives the MPN logits; a cross-entropy on them trains
the backbone through the MPN head. At test time only the backbone embedding is used (optionally
refined by the trained MPN: ``evaluation.refine_embeddings``).

Softmax detail: the authors' release normalises with an implicit extra logit of zero,
``a_ij = exp(s_ij) / (1 + sum_j' exp(s_ij'))``, so each row sums to slightly less than one (a node
may "attend to nothing"). ``zero_logit=True`` computes that; the default is the standard softmax of
the paper's equation. The benchmark presets (``presets.py``) set ``zero_logit=True``, as the release
computes; the glyph presets keep the equation.

**Controls of the studies**, beside the published path (``bench/messages_study.md`` measures each).
Each is its own module, chosen when the model is built (``ModelConfig.mpn_attention``); none adds a
branch to the forward passes above:

- :class:`UniformAttention`: a_ij = 1/N, the plain mean over the batch (aggregation without attention);
- :class:`OracleAttention`: a_ij = 1/n_c over the n_c samples of i's class in the batch (i itself
  included, or not): attention given by the labels. A control, for training only (it reads the
  labels, which the training loop hands it with :meth:`MetricLearningModel.provide_labels`); one
  fixed pattern, not a bound on what learned attention could do;
- :class:`NoMessages`: every message is zero, nothing flows between samples (the messages-off
  control, and the message warm-up of ``glyphs-attention``: :meth:`MessagePassingNetwork.set_pass_messages`);
- :class:`SimilarityAttention`: a_ij = softmax_j of a given similarity (the backbone's own), through a trained
  layer's W_v and W_o: the non-learned twin of the learned attention, at test time.

Every variant owns the same four maps W_q, W_k, W_v, W_o (a control leaves some unused), so a control
is initialised from exactly the random draws of the model it controls, and a seed-paired difference
measures the variant, not a reshuffled initialisation. How the maps start is a choice of
:class:`BatchAttention` too: ``identity_values`` (W_v = W_o = I: a message starts as the weighted mean
of the inputs), ``similarity_prior`` (W_q = W_k = I: attention starts as the inputs' similarity) and
``zero_out`` (W_o = 0: messages start at exactly zero). ``input_scale`` multiplies the MPN's
L2-normalised input (with unit-norm inputs the scores start within about ±0.003, so the softmax
starts uniform). ``mpn_layers=0``, ``input_map=False``, ``normalize_input=False`` and
``classifier="linear"`` take parts of the head away (the decomposition study).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mpn_tutorial.backbones import IMAGENET_WEIGHT_FILES, GlyphEncoder, ResNetBackbone, load_imagenet_weights
from mpn_tutorial.errors import UsageError
from mpn_tutorial.tools.settings import setting

ATTENTION_KINDS = ("learned", "uniform", "oracle", "oracle_without_self", "none")
MPN_CLASSIFIERS = ("bnneck", "linear")
BACKBONE_CLASSIFIERS = ("linear", "cosine")
# The published layer's sizes: MessagePassingLayer's defaults and ModelConfig's (one declaration).
FF_DIM, DROPOUT = 2048, 0.1


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., N, dim) -> (..., num_heads, N, dim // num_heads): head h takes the h-th slice of each row."""
    return x.unflatten(-1, (num_heads, -1)).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., num_heads, N, head_dim) -> (..., N, num_heads * head_dim): the heads concatenated per row."""
    return x.transpose(-3, -2).flatten(-2)


def attention_weights(q: torch.Tensor, k: torch.Tensor, zero_logit: bool = False) -> torch.Tensor:
    """a = softmax_j(q_i · k_j / sqrt(d)): q, k (..., H, N, d) -> (..., H, N, N), rows summing to 1
    (to slightly less with ``zero_logit``: a softmax over the scores and one extra logit of 0)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if zero_logit:
        scores = torch.cat([scores, scores.new_zeros(scores.shape[:-1] + (1,))], dim=-1)
        return torch.softmax(scores, dim=-1)[..., :-1]
    return torch.softmax(scores, dim=-1)


class BatchAttention(nn.Module):
    """Multi-head dot-product attention over the batch: x (N, dim) -> messages m (N, dim) (or B
    independent batches, (B, N, dim)).

    ``forward(x, return_attention=True)`` also returns the weights a (num_heads, N, N), where
    ``a[h, i, j]`` is the weight sample i gives to sample j's value in head h; without it the same
    computation runs in one fused kernel and the weights are None.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = DROPOUT, zero_logit: bool = False, *,
                 identity_values: bool = False, similarity_prior: bool = False, zero_out: bool = False) -> None:
        super().__init__()
        self.num_heads, self.dropout, self.zero_logit = num_heads, dropout, zero_logit
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attention_dropout = nn.Dropout(dropout)
        # Published: Xavier-uniform weights and zero biases, as the official code.
        starts = {"q_proj": similarity_prior, "k_proj": similarity_prior, "v_proj": identity_values,
                  "out_proj": identity_values}
        for name, identity in starts.items():
            projection = getattr(self, name)
            (nn.init.eye_ if identity else nn.init.xavier_uniform_)(projection.weight)
            nn.init.zeros_(projection.bias)
        if zero_out:
            nn.init.zeros_(self.out_proj.weight)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        q, k, v = (split_heads(projection(x), self.num_heads) for projection in (self.q_proj, self.k_proj, self.v_proj))
        if return_attention:
            weights = attention_weights(q, k, self.zero_logit)  # (H, N, N)
            heads = self.attention_dropout(weights) @ v  # (H, N, head_dim): sum_j a_ij v_j
        else:  # the same computation in one fused kernel
            weights = None
            if self.zero_logit:  # a key of zeros scores exactly 0, and its value of zeros adds nothing
                k, v = (torch.cat([t, t.new_zeros(t.shape[:-2] + (1, t.shape[-1]))], dim=-2) for t in (k, v))
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(merge_heads(heads)), weights  # W_o concat_h(...)


class FixedAttention(BatchAttention):
    """A control: messages through W_v and W_o with weights set by a rule (:meth:`rule`), not by q·k."""

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        """The weights for a batch x (N, dim): (N, N), the same in every head."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        weights = self.rule(x).expand(self.num_heads, -1, -1)  # (H, N, N)
        heads = self.attention_dropout(weights) @ split_heads(self.v_proj(x), self.num_heads)
        return self.out_proj(merge_heads(heads)), (weights if return_attention else None)


class UniformAttention(FixedAttention):
    """a_ij = 1/N: every sample receives the plain mean of the batch's values (aggregation without attention)."""

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((x.shape[-2], x.shape[-2]), 1 / x.shape[-2])


class OracleAttention(FixedAttention):
    """a_ij = 1/n_c over the samples j of i's class (i included, or not with ``include_self=False``):
    attention given by the labels. Training only: ``labels`` (N,) of the current batch must be set
    before each forward pass (:meth:`MetricLearningModel.provide_labels`)."""

    def __init__(self, *args, include_self: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.include_self = include_self
        self.labels: torch.Tensor | None = None

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        if self.labels is None or x.dim() != 2 or len(self.labels) != len(x):
            raise UsageError("oracle attention needs the batch's labels: call model.provide_labels(labels) before "
                                "the forward pass (the training loop does); it is a control for training, not for "
                                "test time")
        labels, self.labels = self.labels, None  # used once: a later forward pass must hand its own batch's labels
        same_class = (labels[:, None] == labels[None, :]).to(x.dtype)
        if not self.include_self:
            same_class.fill_diagonal_(0)
        return same_class / same_class.sum(dim=1, keepdim=True).clamp_min(1)


class SimilarityAttention(FixedAttention):
    """a_ij = softmax_j(sharpness · similarity_ij) for a given (N, N) ``similarity`` (set before each forward
    pass), e.g. the cosine similarity of the backbone embeddings: the non-learned twin of a trained
    layer, used through that layer's own W_v and W_o (test time only: ``evaluation.similarity_twin``)."""

    def __init__(self, *args, sharpness: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sharpness = sharpness
        self.similarity: torch.Tensor | None = None

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        if self.similarity is None or self.similarity.shape != (x.shape[-2], x.shape[-2]):
            raise UsageError("SimilarityAttention needs the batch's (N, N) similarity: set .similarity first")
        return torch.softmax(self.sharpness * self.similarity, dim=-1)


class NoMessages(nn.Module):
    """The messages-off control: every message is zero, so nothing flows between samples and the layer is
    ``LN(LN(x) + FFN(LN(x)))`` of each sample alone. It keeps the maps of the attention it replaces
    (unused; ``replaced`` gives that attention back), so its parameters and their starting values are
    the controlled model's."""

    def __init__(self, replaced: BatchAttention) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            replaced.q_proj, replaced.k_proj, replaced.v_proj, replaced.out_proj)
        self.__dict__["replaced"] = replaced  # not a submodule: its parameters are registered above

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        return torch.zeros_like(x), None


class FeedForward(nn.Module):
    """The position-wise feed-forward network: (N, dim) -> (N, dim), ``Dropout(W_2 Dropout(ReLU(W_1 x)))``."""

    def __init__(self, dim: int, ff_dim: int = FF_DIM, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)  # W_1
        self.linear2 = nn.Linear(ff_dim, dim)  # W_2
        self.hidden_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dropout(self.linear2(self.hidden_dropout(F.relu(self.linear1(x)))))


class MessagePassingLayer(nn.Module):
    """One round of message passing over the batch: a post-norm transformer block whose "sequence" is
    the batch (module docstring). x (N, dim) -> (N, dim); ``layer(x, return_attention=True)`` ->
    (x, weights (num_heads, N, N)). ``attention``: the module that computes the messages
    (default: the published :class:`BatchAttention`; a control of the studies otherwise).
    """

    def __init__(self, dim: int, num_heads: int, ff_dim: int = FF_DIM, dropout: float = DROPOUT,
                 zero_logit: bool = False, *, attention: nn.Module | None = None) -> None:
        super().__init__()
        _check_sizes(dim, num_heads, ff_dim, dropout)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.attention = BatchAttention(dim, num_heads, dropout, zero_logit) if attention is None else attention
        self.feed_forward = FeedForward(dim, ff_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.message_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        _check_batch(x, self.dim, "MessagePassingLayer")
        messages, weights = self.attention(x, return_attention)  # m_i, and a (H, N, N) when asked
        x = self.norm1(x + self.message_dropout(messages))  # residual 1: the messages
        x = self.norm2(x + self.feed_forward(x))  # residual 2: feed-forward
        return (x, weights) if return_attention else x

    # W_q, W_k, W_v, W_o of the paper, on the layer itself (the names other code relies on)
    q_proj = property(lambda self: self.attention.q_proj, doc="W_q: nn.Linear(dim, dim)")
    k_proj = property(lambda self: self.attention.k_proj, doc="W_k: nn.Linear(dim, dim)")
    v_proj = property(lambda self: self.attention.v_proj, doc="W_v: nn.Linear(dim, dim)")
    out_proj = property(lambda self: self.attention.out_proj, doc="W_o: nn.Linear(dim, dim)")


class BNNeckClassifier(nn.Module):
    """BatchNorm1d with a frozen (zero) bias, then a bias-free linear layer: (N, dim) -> (N, C)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.norm.bias.requires_grad_(False)
        self.linear = nn.Linear(dim, num_classes, bias=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(embeddings))


class CosineClassifier(nn.Module):
    """The normalised softmax's classifier: logits are cosines cos(e_i, w_c), (N, dim) -> (N, C) in [-1, 1]
    (the loss divides them by its temperature). Zhai & Wu, "Classification is a strong baseline for deep
    metric learning", BMVC 2019."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T


def make_attention(kind: str, dim: int, num_heads: int, dropout: float = DROPOUT, zero_logit: bool = False,
                   **start) -> nn.Module:
    """The module that computes a layer's messages: ``kind`` one of :data:`ATTENTION_KINDS` ("learned"
    is the published method); ``start``: how BatchAttention's maps start (``identity_values``, ...)."""
    if kind not in ATTENTION_KINDS:
        raise UsageError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    if kind == "oracle_without_self":
        return OracleAttention(dim, num_heads, dropout, zero_logit, include_self=False, **start)
    if kind == "none":
        return NoMessages(BatchAttention(dim, num_heads, dropout, zero_logit, **start))
    classes = {"learned": BatchAttention, "uniform": UniformAttention, "oracle": OracleAttention}
    return classes[kind](dim, num_heads, dropout, zero_logit, **start)


class MessagePassingNetwork(nn.Module):
    """Input map, ``num_layers`` message-passing layers, and (optionally) the MPN's classifier.

    ``forward(x)``: embeddings (N, dim) -> refined embeddings (N, out_dim), where ``out_dim`` is
    ``dim``, or ``dim * num_layers`` with ``concat_layers=True`` (the Cars196 preset: the classifier
    sees every layer's output). ``forward(x, return_attention=True)`` -> (embeddings, list with one
    (num_heads, N, N) tensor per layer, None for a layer that passes no messages). ``classifier``
    (present when ``num_classes`` is given): BNNeck (published) or a plain linear layer, on the output.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, num_classes: int | None = None,
                 ff_dim: int = FF_DIM, dropout: float = DROPOUT, zero_logit: bool = False,
                 concat_layers: bool = False, *, input_scale: float = 1.0, input_map: bool = True,
                 attention: str = "learned", classifier: str = "bnneck", **start) -> None:
        super().__init__()
        if num_layers < 0 or (concat_layers and num_layers < 1):
            raise UsageError(f"num_layers must be at least 0 (1 with concat_layers), got {num_layers}")
        if not input_scale > 0:
            raise UsageError(f"input_scale must be positive, got {input_scale}")
        if classifier not in MPN_CLASSIFIERS:
            raise UsageError(f"classifier must be one of {', '.join(MPN_CLASSIFIERS)}, got {classifier!r}")
        if num_layers:
            _check_sizes(dim, num_heads, ff_dim, dropout)
        self.dim, self.concat_layers, self.input_scale, self.attention_kind = dim, concat_layers, input_scale, attention
        self.out_dim = dim * num_layers if concat_layers else dim
        self.input_proj = nn.Linear(dim, dim) if input_map else nn.Identity()
        self.layers = nn.ModuleList(
            MessagePassingLayer(dim, num_heads, ff_dim, dropout, zero_logit,
                                attention=make_attention(attention, dim, num_heads, dropout, zero_logit, **start))
            for _ in range(num_layers)
        )
        self.classifier = None
        if num_classes is not None:
            self.classifier = (BNNeckClassifier(self.out_dim, num_classes) if classifier == "bnneck"
                               else nn.Linear(self.out_dim, num_classes, bias=False))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        _check_batch(x, self.dim, "MessagePassingNetwork")
        x = self.input_proj(x * self.input_scale)
        outputs, attention = [], []
        for layer in self.layers:
            x, weights = layer(x, return_attention=True) if return_attention else (layer(x), None)
            outputs.append(x)
            attention.append(weights)
        embeddings = torch.cat(outputs, dim=-1) if self.concat_layers else x
        return (embeddings, attention) if return_attention else embeddings

    @property
    def passes_messages(self) -> bool:
        """Whether any layer passes messages now (False: the messages-off control, or during a warm-up)."""
        return any(not isinstance(layer.attention, NoMessages) for layer in self.layers)

    def set_pass_messages(self, enabled: bool) -> None:
        """Switch message passing off (every layer's attention becomes :class:`NoMessages` over the same
        parameters: the state dict is unchanged) or back on: the message warm-up, and the test-time
        control "MPN without messages". A network built with ``attention="none"`` stays off."""
        if self.attention_kind == "none":
            return
        for layer in self.layers:
            if not enabled and not isinstance(layer.attention, NoMessages):
                layer.attention = NoMessages(layer.attention)
            elif enabled and isinstance(layer.attention, NoMessages):
                layer.attention = layer.attention.replaced.train(layer.training)


@dataclass
class ModelConfig:
    """The model's part of a run's settings (:class:`~mpn_tutorial.config.TrainConfig` extends it); the
    defaults are the published method, the studies' options (module docstring) off."""

    backbone: str = setting("glyph_cnn", "the backbone: the glyph CNN, or a ResNet for the benchmarks",
                            choices=("glyph_cnn", "resnet18", "resnet50"))
    glyph_channels: tuple[int, ...] = setting((32, 64, 128, 256), "channels of the glyph CNN's blocks", low=1)
    embedding_dim: int = setting(64, "size of the embedding (512 published)", low=1)
    pretrained: bool = setting(False, "start the ResNet from ImageNet weights")
    weights_path: str | None = setting(None, "local ImageNet weights file for the ResNet", path="file")
    # Not only a memory saving: recomputing a stage in the backward pass runs its BatchNorm again,
    # which updates the running statistics a second time, so it is part of what a run computes.
    checkpointing: bool = setting(False, "activation checkpointing of the ResNet stages (less GPU memory)")
    backbone_classifier: str = setting("linear", "the backbone's classifier: linear (published) or cosine (the "
                                       "normalised softmax)", choices=BACKBONE_CLASSIFIERS)
    mpn_layers: int = setting(1, "message-passing layers (0: the MPN head without them)", flag="layers", low=0)
    mpn_heads: int = setting(2, "attention heads (must divide the embedding dimension)", flag="heads", low=1)
    mpn_ff_dim: int = setting(FF_DIM, "width of the layers' feed-forward block", flag="ff-dim", low=1)
    mpn_dropout: float = setting(DROPOUT, "dropout in the message-passing layers", flag="mpn-dropout", low=0, below=1)
    zero_logit: bool = setting(False, "the release's softmax with an extra zero logit (rows sum to less than 1)")
    concat_layers: bool = setting(False, "the MPN's classifier sees every layer's output concatenated (Cars196)")
    mpn_attention: str = setting("learned", "how messages are weighted: learned (published), or a control: uniform "
                                 "(the batch mean), oracle / oracle_without_self (the labels), none (messages off)",
                                 flag="attention", choices=ATTENTION_KINDS)
    mpn_input_scale: float = setting(1.0, "multiply the MPN's normalised input by this (1 published; "
                                     "glyphs-attention: 2 sqrt(D))", above=0)
    mpn_input_map: bool = setting(True, "a Linear(D, D) before the message-passing layers", flag="input-map")
    mpn_normalize_input: bool = setting(True, "the MPN sees the L2-normalised embedding (published)",
                                        flag="normalize-mpn-input")
    mpn_classifier: str = setting("bnneck", "the MPN's classifier: bnneck (BatchNorm, then linear; published) or "
                                  "linear", choices=MPN_CLASSIFIERS)
    mpn_identity_values: bool = setting(False, "W_v and W_o start as the identity", flag="identity-values")
    mpn_similarity_prior: bool = setting(False, "W_q and W_k start as the identity", flag="similarity-prior")
    mpn_zero_out: bool = setting(False, "W_o starts at zero: messages start at 0 and the gradient decides",
                                 flag="zero-out")


@dataclass
class ModelOutput:
    """What the model's forward pass returns for training (all tensors have N rows, the batch size).

    Logits are raw: the loss divides them by its temperature (``losses.MessagePassingObjective``).
    """

    embeddings: torch.Tensor  # (N, D) backbone embedding, not normalised
    backbone_logits: torch.Tensor | None = None  # (N, C) or None without a classifier
    mpn_embeddings: torch.Tensor | None = None  # (N, out_dim) after message passing, or None without an MPN
    mpn_logits: torch.Tensor | None = None  # (N, C) or None without an MPN
    attention: list[torch.Tensor | None] = field(default_factory=list)  # per layer (num_heads, N, N), when asked


class MetricLearningModel(nn.Module):
    """Backbone -> embedding -> (backbone classifier, message passing network -> MPN classifier).

    Built from a :class:`ModelConfig`, the number of training classes (0: no classifier, for pair and
    triplet losses), the image channels, and whether it has the MPN head. ``model(images)``: a
    :class:`ModelOutput` for training; ``classify(embeddings)``: the same from backbone embeddings;
    ``embed``: the backbone embedding; ``retrieval_embeddings``: its normalised form, what retrieval
    compares (no MPN).
    """

    def __init__(self, config: ModelConfig, num_classes: int = 0, in_channels: int = 1,
                 mpn_head: bool = True) -> None:
        super().__init__()
        self.config, self.num_classes = config, num_classes
        if config.backbone == "glyph_cnn":
            self.backbone = GlyphEncoder(in_channels, tuple(config.glyph_channels))
        else:
            self.backbone = ResNetBackbone(config.backbone, config.pretrained, config.weights_path,
                                           config.checkpointing)
        self.embedding = nn.Linear(self.backbone.feature_dim, config.embedding_dim)
        self.classifier = None
        if num_classes > 0:
            self.classifier = (CosineClassifier(config.embedding_dim, num_classes) if config.backbone_classifier ==
                               "cosine" else nn.Linear(config.embedding_dim, num_classes))
        self.mpn = None
        if mpn_head:
            if num_classes <= 0:
                raise UsageError("message passing is trained through its classifier: set num_classes > 0")
            self.mpn = MessagePassingNetwork(
                config.embedding_dim, config.mpn_layers, config.mpn_heads, num_classes, config.mpn_ff_dim,
                config.mpn_dropout, config.zero_logit, config.concat_layers, input_scale=config.mpn_input_scale,
                input_map=config.mpn_input_map, attention=config.mpn_attention, classifier=config.mpn_classifier,
                identity_values=config.mpn_identity_values, similarity_prior=config.mpn_similarity_prior,
                zero_out=config.mpn_zero_out,
            )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone embedding, not normalised: (N, C, H, W) -> (N, D)."""
        return self.embedding(self.backbone(images))

    def retrieval_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised backbone embedding, what retrieval compares: (N, C, H, W) -> (N, D).

        Call it in eval mode (``model.eval()``) so BatchNorm uses its running statistics.
        """
        return F.normalize(self.embed(images), dim=1)

    def forward(self, images: torch.Tensor, return_attention: bool = False, gather=None) -> ModelOutput:
        """Training outputs for a batch of images: (N, C, H, W) -> :class:`ModelOutput`.

        ``gather`` (multi-GPU training): turns this process's embeddings into the global batch's, so
        the classifiers and the MPN see every sample.
        """
        embeddings = self.embed(images)
        return self.classify(embeddings if gather is None else gather(embeddings), return_attention)

    def classify(self, embeddings: torch.Tensor, return_attention: bool = False) -> ModelOutput:
        """Both classifiers, and message passing, on backbone embeddings (N, D) -> :class:`ModelOutput`."""
        output = ModelOutput(embeddings=embeddings)
        if self.classifier is not None:
            output.backbone_logits = self.classifier(embeddings)
        if self.mpn is not None:
            x = self.mpn_input(embeddings)
            if return_attention:
                output.mpn_embeddings, output.attention = self.mpn(x, return_attention=True)
            else:
                output.mpn_embeddings = self.mpn(x)
            output.mpn_logits = self.mpn.classifier(output.mpn_embeddings)
        return output

    def mpn_input(self, embeddings: torch.Tensor) -> torch.Tensor:
        """What the MPN receives: the L2-normalised backbone embedding, as published (N, D) -> (N, D)."""
        return F.normalize(embeddings, dim=-1) if self.config.mpn_normalize_input else embeddings

    @property
    def has_attention(self) -> bool:
        """Whether there are attention weights to look at: an MPN with layers, not the messages-off control."""
        return self.mpn is not None and len(self.mpn.layers) > 0 and self.mpn.attention_kind != "none"

    def provide_labels(self, labels: torch.Tensor) -> None:
        """Hand the current batch's labels (N,) to the modules that read them: the oracle control only."""
        for module in self.modules():
            if isinstance(module, OracleAttention):
                module.labels = labels


def _check_sizes(dim: int, num_heads: int, ff_dim: int, dropout: float) -> None:
    if dim < 1 or num_heads < 1 or ff_dim < 1:
        raise UsageError(f"dim, num_heads and ff_dim must be at least 1, got {dim}, {num_heads}, {ff_dim}")
    if dim % num_heads != 0:
        raise UsageError(f"dim={dim} must be divisible by num_heads={num_heads}")
    if not 0 <= dropout < 1:
        raise UsageError(f"dropout must be in [0, 1), got {dropout}")


def _check_batch(x: torch.Tensor, dim: int, name: str) -> None:
    """A batch (N, dim), or B independent batches (B, N, dim) (test-time refinement runs many at once)."""
    if x.dim() not in (2, 3) or x.shape[-1] != dim:
        raise UsageError(f"{name} expects a batch of shape (N, {dim}) or (B, N, {dim}), got {tuple(x.shape)}")
    if x.shape[-2] < 2:
        raise UsageError(f"{name}: message passing needs a batch of at least 2 samples, got {x.shape[-2]}")


__all__ = ["ATTENTION_KINDS", "BACKBONE_CLASSIFIERS", "IMAGENET_WEIGHT_FILES", "MPN_CLASSIFIERS", "BNNeckClassifier",
           "BatchAttention", "CosineClassifier", "FeedForward", "FixedAttention", "GlyphEncoder",
           "MessagePassingLayer", "MessagePassingNetwork", "MetricLearningModel", "ModelConfig", "ModelOutput",
           "NoMessages", "OracleAttention", "ResNetBackbone", "SimilarityAttention", "UniformAttention",
           "attention_weights", "load_imagenet_weights", "make_attention", "merge_heads", "split_heads"]
