"""The studies' controls and options (controls.py): each replaces one part of the published model when
the model is built, starts from the published model's random draws, and computes what its name says."""

import math

import pytest
import torch
import torch.nn.functional as F

from mpn_tutorial.config import TrainConfig, create_model
from mpn_tutorial.controls import (
    ATTENTION,
    CosineClassifier,
    NoMessages,
    OracleAttention,
    StudyAttention,
    StudyModel,
    pass_messages,
    passes_messages,
    provide_labels,
    similarity_twin,
    without_messages,
)
from mpn_tutorial.models import BatchAttention, MessagePassingLayer, MessagePassingNetwork, MetricLearningModel


def _config(**options) -> TrainConfig:
    return TrainConfig(embedding_dim=16, glyph_channels=(8, 16), mpn_heads=2, mpn_ff_dim=32, **options)


def _model(**options):
    return create_model(_config(**options), 5)


def _each_output_depends_only_on_its_own_input(network) -> bool:
    x = torch.randn(5, 16)
    changed = x.clone()
    changed[1:] = torch.randn(4, 16)
    return torch.allclose(network(changed)[0], network(x)[0])


def test_a_run_without_study_options_is_built_by_the_published_model_alone():
    assert type(_model()) is MetricLearningModel
    assert type(_model(mpn_attention="uniform")) is StudyModel
    assert type(_model(backbone_classifier="cosine", loss="ce")) is StudyModel


def test_a_study_model_has_the_published_models_parameter_names():
    assert list(_model(mpn_identity_values=True).state_dict()) == list(_model().state_dict())


def test_the_messages_off_control_makes_each_output_depend_only_on_its_own_input():
    torch.manual_seed(0)
    off = MessagePassingNetwork(16, 1, 2, ff_dim=32, attention=NoMessages).eval()
    assert _each_output_depends_only_on_its_own_input(off)
    on = MessagePassingNetwork(16, 1, 2, ff_dim=32).eval()
    on.load_state_dict(off.state_dict())  # the control has the same parameters as the model it controls
    assert not _each_output_depends_only_on_its_own_input(on)


def test_the_warm_up_switch_turns_messages_off_and_back_on_with_the_same_modules():
    model = _model(message_warmup_epochs=1).eval()
    attention, keys = model.mpn.layers[0].attention, list(model.state_dict())
    pass_messages(model, False)
    assert not passes_messages(model) and _each_output_depends_only_on_its_own_input(model.mpn)
    pass_messages(model, True)
    assert model.mpn.layers[0].attention is attention and list(model.state_dict()) == keys
    assert passes_messages(model) and not _each_output_depends_only_on_its_own_input(model.mpn)


def test_the_published_model_has_no_message_switch_to_turn_off():
    with pytest.raises(ValueError, match="no message switch"):
        pass_messages(_model(), False)


def test_a_model_built_as_the_messages_off_control_stays_off():
    model = _model(mpn_attention="none").eval()
    pass_messages(model, True)
    assert _each_output_depends_only_on_its_own_input(model.mpn) and not model.has_attention


@pytest.mark.parametrize("kind", sorted(ATTENTION))
def test_every_attention_variant_starts_from_the_random_draws_of_the_published_one(kind):
    torch.manual_seed(0)
    published = BatchAttention(8, 2)
    after_published = torch.randn(3)
    torch.manual_seed(0)
    variant = ATTENTION[kind](8, 2, 0.1, False)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        torch.testing.assert_close(getattr(variant, name).weight, getattr(published, name).weight)
    torch.testing.assert_close(torch.randn(3), after_published)  # and the next draw after it


def test_identity_values_make_a_message_the_attention_weighted_mean_of_the_inputs():
    torch.manual_seed(0)
    start = lambda *args: StudyAttention(*args, identity=("v_proj", "out_proj"))  # noqa: E731
    layer = MessagePassingLayer(8, 2, ff_dim=16, dropout=0.0, attention=start).eval()
    x = torch.randn(5, 8)
    _, attention = layer(x, return_attention=True)
    expected = torch.cat([attention[h] @ x[:, 4 * h : 4 * (h + 1)] for h in range(2)], dim=1)
    heads = [attention[h] @ layer.v_proj(x)[:, 4 * h : 4 * (h + 1)] for h in range(2)]
    torch.testing.assert_close(layer.out_proj(torch.cat(heads, dim=1)), expected)


def test_a_similarity_prior_starts_attention_as_the_scaled_similarity_of_the_inputs():
    torch.manual_seed(0)
    start = lambda *args: StudyAttention(*args, identity=("q_proj", "k_proj"))  # noqa: E731
    layer = MessagePassingLayer(8, 1, ff_dim=16, dropout=0.0, attention=start).eval()
    x = torch.randn(5, 8)
    _, attention = layer(x, return_attention=True)
    torch.testing.assert_close(attention[0], torch.softmax(x @ x.T / math.sqrt(8), dim=1))


def test_the_input_scale_multiplies_the_normalised_mpn_input():
    model = _model(mpn_input_scale=3.0)
    embeddings = torch.randn(5, 16)
    torch.testing.assert_close(model.mpn_input(embeddings), 3.0 * F.normalize(embeddings, dim=1))


def test_a_zero_output_map_starts_the_layer_as_its_messages_off_control():
    torch.manual_seed(0)
    zero = MessagePassingLayer(8, 2, ff_dim=16, dropout=0.0,
                               attention=lambda *args: StudyAttention(*args, zero_out=True)).eval()
    off = MessagePassingLayer(8, 2, ff_dim=16, dropout=0.0, attention=NoMessages).eval()
    off.load_state_dict(zero.state_dict())
    off.attention.out_proj.weight.data.normal_()  # anything: messages off never uses it
    x = torch.randn(6, 8)
    torch.testing.assert_close(zero(x), off(x))


def _fixed_weights(kind, labels):
    model = _model(mpn_attention=kind).eval()
    provide_labels(model, labels)
    return model(torch.randn(len(labels), 1, 32, 32), return_attention=True).attention[0]


@pytest.mark.parametrize("include_self", [True, False])
def test_oracle_attention_gives_every_sample_the_mean_of_its_class(include_self):
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    attention = _fixed_weights("oracle" if include_self else "oracle_without_self", labels)
    same = (labels[:, None] == labels[None, :]).float()
    if not include_self:
        same.fill_diagonal_(0)
    expected = same / same.sum(1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(attention, expected.expand(2, 6, 6))


def test_oracle_attention_without_the_labels_says_it_needs_them():
    model = _model(mpn_attention="oracle").eval()
    assert isinstance(model.mpn.layers[0].attention, OracleAttention)
    with pytest.raises(ValueError, match="provide_labels"):
        model(torch.randn(6, 1, 32, 32))


def test_uniform_attention_gives_every_sample_the_mean_of_the_batch():
    attention = _fixed_weights("uniform", torch.tensor([0, 0, 1, 1, 2, 2]))
    torch.testing.assert_close(attention, torch.full((2, 6, 6), 1 / 6))


def test_a_head_without_layers_or_input_map_classifies_the_normalised_embedding():
    model = _model(mpn_layers=0, mpn_input_map=False).eval()
    images = torch.randn(6, 1, 32, 32)
    output = model(images)
    normalised = F.normalize(output.embeddings, dim=1)
    torch.testing.assert_close(output.mpn_embeddings, normalised)
    torch.testing.assert_close(output.mpn_logits, model.mpn_classifier(normalised))


def test_the_decomposition_head_can_see_the_raw_embedding_through_a_plain_linear_classifier():
    model = _model(mpn_layers=0, mpn_input_map=False, mpn_normalize_input=False, mpn_classifier="linear").eval()
    assert isinstance(model.mpn_classifier, torch.nn.Linear)
    output = model(torch.randn(6, 1, 32, 32))
    torch.testing.assert_close(output.mpn_logits, output.embeddings @ model.mpn_classifier.weight.T)


def test_the_cosine_classifier_gives_the_cosines_of_embedding_and_class_weights():
    classifier = CosineClassifier(8, 3)
    embeddings = torch.randn(5, 8) * 7
    expected = F.cosine_similarity(embeddings[:, None], classifier.weight[None], dim=-1)
    torch.testing.assert_close(classifier(embeddings), expected)


def test_the_mpn_without_messages_at_test_time_is_each_sample_alone_through_the_trained_layers():
    model = _model().eval()
    x = F.normalize(torch.randn(6, 16), dim=1)
    expected = model.mpn.input_proj(x)
    layer = model.mpn.layers[0]
    expected = layer.norm1(expected)
    expected = layer.norm2(expected + layer.feed_forward(expected))
    torch.testing.assert_close(without_messages(model, x), expected)
    assert type(model.mpn.layers[0].attention) is BatchAttention  # the model itself is left as it was


def test_the_similarity_twin_passes_the_backbone_similarity_through_the_trained_value_and_output_maps():
    model = _model().eval()
    embeddings = torch.randn(6, 16)
    normalised = F.normalize(embeddings, dim=1)
    weights = torch.softmax(4.0 * normalised @ normalised.T, dim=1)
    layer = model.mpn.layers[0]
    x = model.mpn.input_proj(normalised)
    values = layer.v_proj(x).view(6, 2, 8).transpose(0, 1)
    messages = layer.out_proj((weights @ values).transpose(0, 1).reshape(6, 16))
    x = layer.norm1(x + messages)
    expected = layer.norm2(x + layer.feed_forward(x))
    with torch.no_grad():
        torch.testing.assert_close(similarity_twin(model, embeddings, 4.0), expected)
