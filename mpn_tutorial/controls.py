"""The studies' controls and options, beside the published model of ``models.py``.

A control answers "is it the attention, or something else?" (``bench/messages_study.md`` measures each).
:class:`StudyModel` builds the controls and the options of :class:`StudyConfig` when a model is built, never while
it runs. Every variant owns the maps W_q, W_k, W_v, W_o (a control leaves some unused) and draws them in the
published order, so a control starts from exactly the random draws of the model it controls: a seed-paired
difference measures the variant, not a reshuffled initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mpn_tutorial.errors import UsageError
from mpn_tutorial.models import BatchAttention, MessagePassingNetwork, MetricLearningModel, merge_heads, split_heads
from mpn_tutorial.tools.settings import setting

ATTENTION_KINDS = ("learned", "uniform", "oracle", "oracle_without_self", "none")


@dataclass
class StudyConfig:
    """The studies' options (part of :class:`~mpn_tutorial.config.TrainConfig`); every default is the
    published method, and a run whose options are all defaults is built by ``models.py`` alone."""

    backbone_classifier: str = setting("linear", "the backbone's classifier: linear (published) or cosine (the "
                                       "normalised softmax)", choices=("linear", "cosine"))
    mpn_attention: str = setting("learned", "how messages are weighted: learned (published), or a control: uniform "
                                 "(the batch mean), oracle / oracle_without_self (the labels), none (messages off)",
                                 flag="attention", choices=ATTENTION_KINDS)
    message_warmup_epochs: int = setting(0, "epochs trained with messages off (the MPN head alone) before they start "
                                         "(0 with --attention none)", low=0)
    mpn_input_scale: float = setting(1.0, "multiply the MPN's normalised input by this (1 published; "
                                     "glyphs-attention: 2 sqrt(D))", above=0)
    mpn_input_map: bool = setting(True, "a Linear(D, D) before the message-passing layers", flag="input-map")
    mpn_normalize_input: bool = setting(True, "the MPN sees the L2-normalised embedding (published)",
                                        flag="normalize-mpn-input")
    mpn_classifier: str = setting("bnneck", "the MPN's classifier: bnneck (BatchNorm, then linear; published) or "
                                  "linear", choices=("bnneck", "linear"))
    mpn_identity_values: bool = setting(False, "W_v and W_o start as the identity", flag="identity-values")
    mpn_similarity_prior: bool = setting(False, "W_q and W_k start as the identity", flag="similarity-prior")
    mpn_zero_out: bool = setting(False, "W_o starts at zero: messages start at 0 and the gradient decides",
                                 flag="zero-out")


def is_study(config: StudyConfig) -> bool:
    """Whether a run's settings name a study option (then :class:`StudyModel` builds its model)."""
    return any(getattr(config, option.name) != option.default for option in fields(StudyConfig))


def check_study(config) -> None:
    """The rules that tie the study options to the rest of a run's settings (``TrainConfig.validate``)."""
    if config.mpn_attention == "none" and config.message_warmup_epochs:
        raise UsageError(f"message_warmup_epochs={config.message_warmup_epochs} delays messages that attention "
                         "'none' never passes: set message_warmup_epochs to 0 (TrainConfig.without_messages does)")


# The attention's controls
class StudyAttention(BatchAttention):
    """:class:`~mpn_tutorial.models.BatchAttention` with the studies' starts of its maps and a switch for
    a message warm-up (``passes_messages``, set by :func:`pass_messages`; off: every message is 0)."""

    computes_weights = True

    def __init__(self, dim: int, num_heads: int, dropout: float, zero_logit: bool, *,
                 identity: tuple[str, ...] = (), zero_out: bool = False) -> None:
        self.identity, self.zero_out = identity, zero_out  # read by reset_parameters, which __init__ calls
        super().__init__(dim, num_heads, dropout, zero_logit)
        self.passes_messages = True

    def reset_parameters(self) -> None:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):  # in the published order: the same draws
            projection = getattr(self, name)
            (nn.init.eye_ if name in self.identity else nn.init.xavier_uniform_)(projection.weight)
            nn.init.zeros_(projection.bias)
        if self.zero_out:
            nn.init.zeros_(self.out_proj.weight)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if not self.passes_messages:
            return torch.zeros_like(x), None
        return self.messages(x, return_attention)

    def messages(self, x: torch.Tensor, return_attention: bool):
        """The messages when they pass: the learned attention's."""
        return super().forward(x, return_attention)


class FixedAttention(StudyAttention):
    """Messages through W_v and W_o with weights set by a rule (:meth:`rule`), not by q·k."""

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        """The weights for a batch x (N, dim): (N, N), the same in every head."""
        raise NotImplementedError

    def messages(self, x: torch.Tensor, return_attention: bool):
        weights = self.rule(x).expand(self.num_heads, -1, -1)  # (H, N, N)
        heads = self.attention_dropout(weights) @ split_heads(self.v_proj(x), self.num_heads)
        return self.out_proj(merge_heads(heads)), (weights if return_attention else None)


class UniformAttention(FixedAttention):
    """a_ij = 1/N: every sample receives the plain mean of the batch's values (aggregation without attention)."""

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((x.shape[-2], x.shape[-2]), 1 / x.shape[-2])


class OracleAttention(FixedAttention):
    """a_ij = 1/n_c over the samples j of i's class (i included, or not with ``include_self=False``):
    attention given by the labels, one fixed pattern (not a bound on learned attention). Training only:
    ``labels`` (N,) of the current batch must be set before each forward pass (:func:`provide_labels`)."""

    def __init__(self, *args, include_self: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.include_self = include_self
        self.labels: torch.Tensor | None = None

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        if self.labels is None or x.dim() != 2 or len(self.labels) != len(x):
            raise UsageError("oracle attention needs the batch's labels: call controls.provide_labels(model, labels) "
                             "before the forward pass (the training loop does); it is a control for training, not "
                             "for test time")
        labels, self.labels = self.labels, None  # used once: a later forward pass must hand its own batch's labels
        same_class = (labels[:, None] == labels[None, :]).to(x.dtype)
        if not self.include_self:
            same_class.fill_diagonal_(0)
        return same_class / same_class.sum(dim=1, keepdim=True).clamp_min(1)


class SimilarityAttention(FixedAttention):
    """a_ij = softmax_j(sharpness · similarity_ij) for a given (N, N) ``similarity``, set before each forward pass
    (test time only: :func:`similarity_twin` sets the backbone embeddings' cosine similarity)."""

    def __init__(self, *args, sharpness: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sharpness = sharpness
        self.similarity: torch.Tensor | None = None

    def rule(self, x: torch.Tensor) -> torch.Tensor:
        if self.similarity is None or self.similarity.shape != (x.shape[-2], x.shape[-2]):
            raise UsageError("SimilarityAttention needs the batch's (N, N) similarity: set .similarity first")
        return torch.softmax(self.sharpness * self.similarity, dim=-1)


class NoMessages(StudyAttention):
    """The messages-off control: every message is zero, so nothing flows between samples and the layer is
    ``LN(LN(x) + FFN(LN(x)))`` of each sample alone (its unused maps drawn as the attention's it replaces)."""

    computes_weights = False

    def messages(self, x: torch.Tensor, return_attention: bool):
        return torch.zeros_like(x), None


ATTENTION = {"learned": StudyAttention, "uniform": UniformAttention, "oracle": OracleAttention,
             "oracle_without_self": partial(OracleAttention, include_self=False), "none": NoMessages}


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


# The model of a study
class StudyModel(MetricLearningModel):
    """The published model with the parts a run's :class:`StudyConfig` options replace, chosen when it is
    built. Its state dict has the published model's names, so a control's weights load into a twin."""

    config: StudyConfig

    def make_classifier(self, dim: int, num_classes: int) -> nn.Module:
        if self.config.backbone_classifier == "cosine":
            return CosineClassifier(dim, num_classes)
        return super().make_classifier(dim, num_classes)

    def make_mpn(self, attention=None) -> MessagePassingNetwork:
        config = self.config
        identity = (("q_proj", "k_proj") if config.mpn_similarity_prior else ()) + (
            ("v_proj", "out_proj") if config.mpn_identity_values else ())
        attention = attention or ATTENTION[config.mpn_attention]
        return MessagePassingNetwork(config.embedding_dim, config.mpn_layers, config.mpn_heads, config.mpn_ff_dim,
                                     config.mpn_dropout, config.zero_logit, config.concat_layers,
                                     attention=partial(attention, identity=identity, zero_out=config.mpn_zero_out),
                                     input_map=config.mpn_input_map)

    def make_mpn_classifier(self, dim: int, num_classes: int) -> nn.Module:
        if self.config.mpn_classifier == "linear":
            return nn.Linear(dim, num_classes, bias=False)
        return super().make_mpn_classifier(dim, num_classes)

    def mpn_input(self, embeddings: torch.Tensor) -> torch.Tensor:
        normalised = F.normalize(embeddings, dim=-1) if self.config.mpn_normalize_input else embeddings
        return normalised * self.config.mpn_input_scale


def _study_attention(model: nn.Module) -> list[StudyAttention]:
    return [module for module in model.modules() if isinstance(module, StudyAttention)]


def pass_messages(model: nn.Module, enabled: bool) -> None:
    """The message warm-up's switch, applied by the training loop at each epoch: messages off (every
    message 0, the MPN head alone) or on. For a model built with a warm-up (:class:`StudyModel`)."""
    attention = _study_attention(model)
    if not attention and not enabled:
        raise UsageError("this model has no message switch: build it with message_warmup_epochs > 0")
    for module in attention:
        module.passes_messages = enabled


def passes_messages(model: nn.Module) -> bool:
    """Whether the model's messages are on now (False during a warm-up)."""
    return all(module.passes_messages for module in _study_attention(model))


def provide_labels(model: nn.Module, labels: torch.Tensor) -> None:
    """Hand the current batch's labels (N,) to the modules that read them: the oracle control only."""
    for module in model.modules():
        if isinstance(module, OracleAttention):
            module.labels = labels


def twin_network(model: MetricLearningModel, attention) -> MessagePassingNetwork:
    """A copy of the model's trained MPN whose layers compute their messages with ``attention`` (a class of
    this module) instead: the same weights, built for a test-time control (eval mode)."""
    with torch.random.fork_rng(devices=[]):  # building draws maps the trained weights then replace
        twin = model.make_mpn(attention)
    twin.load_state_dict(model.mpn.state_dict())
    return twin.to(next(model.mpn.parameters()).device).eval()


@torch.no_grad()
def without_messages(model: MetricLearningModel, x: torch.Tensor) -> torch.Tensor:
    """The trained MPN on its input x (N, D) or (B, N, D) with every message 0 (eval mode): each sample alone
    through the input map, the norms and the feed-forward blocks (a test-time control)."""
    return twin_network(model, NoMessages)(x)


@torch.no_grad()
def similarity_twin(model: MetricLearningModel, embeddings: torch.Tensor, sharpness: float) -> torch.Tensor:
    """The trained MPN on one batch of backbone embeddings (N, D), with every layer's learned attention
    replaced by the backbone's own similarity, a_ij = softmax_j(sharpness · cos(e_i, e_j)), through the
    layer's trained W_v and W_o: (N, out_dim). The non-learned twin of the learned attention (test time)."""
    normalised = F.normalize(embeddings.float(), dim=-1)
    twin = twin_network(model, partial(SimilarityAttention, sharpness=sharpness))
    for layer in twin.layers:
        layer.attention.similarity = normalised @ normalised.T
    return twin(model.mpn_input(embeddings.float()))
