import math

import pytest
import torch
import torch.nn.functional as F

from mpn_tutorial.backbones import WeightsUnavailableError
from mpn_tutorial.models import (
    BatchAttention,
    CosineClassifier,
    GlyphEncoder,
    MessagePassingLayer,
    MessagePassingNetwork,
    MetricLearningModel,
    ModelConfig,
    ModelOutput,
    NoMessages,
    ResNetBackbone,
    make_attention,
)


def _layer(zero_logit=False, dim=16, heads=4, dropout=0.1):
    torch.manual_seed(0)
    return MessagePassingLayer(dim, heads, ff_dim=32, dropout=dropout, zero_logit=zero_logit).eval()


@pytest.mark.parametrize("zero_logit", [False, True])
def test_attention_weights_are_softmax_of_scaled_query_key_products(zero_logit):
    layer = _layer(zero_logit)
    x = torch.randn(7, 16)
    _, attention = layer(x, return_attention=True)
    q = layer.q_proj(x).view(7, 4, 4).transpose(0, 1)
    k = layer.k_proj(x).view(7, 4, 4).transpose(0, 1)
    scores = q @ k.transpose(1, 2) / math.sqrt(4)
    if zero_logit:
        expected = scores.exp() / (1 + scores.exp().sum(dim=-1, keepdim=True))
    else:
        expected = scores.softmax(dim=-1)
    assert attention.shape == (4, 7, 7)
    torch.testing.assert_close(attention, expected)


def test_standard_softmax_rows_sum_to_one_and_zero_logit_rows_to_less():
    x = torch.randn(6, 16)
    _, standard = _layer(False)(x, return_attention=True)
    _, published = _layer(True)(x, return_attention=True)
    torch.testing.assert_close(standard.sum(-1), torch.ones(4, 6))
    assert (published.sum(-1) < 1).all()


@pytest.mark.parametrize("zero_logit", [False, True])
def test_fused_attention_path_equals_explicit_path(zero_logit):
    layer = _layer(zero_logit)
    x = torch.randn(9, 16)
    explicit, _ = layer(x, return_attention=True)
    torch.testing.assert_close(layer(x), explicit, rtol=1e-5, atol=1e-5)


def test_the_contract_projections_are_the_ones_the_layer_computes_with():
    layer = _layer()
    x = torch.randn(6, 16)
    with torch.no_grad():  # a zero output map: no sample receives anything, whatever the attention
        layer.out_proj.weight.zero_()
        layer.out_proj.bias.zero_()
    changed = x.clone()
    changed[1:] = torch.randn(5, 16)
    torch.testing.assert_close(layer(changed)[0], layer(x)[0])
    with torch.no_grad():  # identical queries and keys for every sample: uniform attention
        layer.q_proj.weight.zero_()
        layer.k_proj.weight.zero_()
    _, attention = layer(x, return_attention=True)
    torch.testing.assert_close(attention, torch.full((4, 6, 6), 1 / 6))


def test_message_passing_network_is_permutation_equivariant_over_the_batch():
    torch.manual_seed(0)
    network = MessagePassingNetwork(16, num_layers=2, num_heads=4, ff_dim=32).eval()
    x = torch.randn(10, 16)
    permutation = torch.randperm(10)
    features, attention = network(x, return_attention=True)
    features_permuted, attention_permuted = network(x[permutation], return_attention=True)
    torch.testing.assert_close(features_permuted, features[permutation], rtol=1e-5, atol=1e-5)
    for layer_attention, layer_attention_permuted in zip(attention, attention_permuted):
        expected = layer_attention[:, permutation][:, :, permutation]
        torch.testing.assert_close(layer_attention_permuted, expected, rtol=1e-5, atol=1e-6)


def test_concatenated_layers_widen_the_classifier_input():
    network = MessagePassingNetwork(16, num_layers=2, num_heads=2, num_classes=5, ff_dim=32, concat_layers=True)
    features = network(torch.randn(4, 16))
    assert features.shape == (4, 32)
    assert network.classifier(features).shape == (4, 5)


def test_bnneck_classifier_has_frozen_bias_and_no_linear_bias():
    network = MessagePassingNetwork(16, 1, 2, num_classes=3)
    assert not network.classifier.norm.bias.requires_grad
    assert network.classifier.linear.bias is None


def test_a_batch_of_one_gets_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 samples"):
        _layer()(torch.randn(1, 16))


def test_wrong_embedding_width_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        _layer()(torch.randn(4, 12))


def _glyph_model(mpn_layers=1, **options):
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=16, glyph_channels=(8, 16), mpn_layers=mpn_layers, mpn_heads=2, mpn_ff_dim=32,
                         **options)
    return MetricLearningModel(config, num_classes=5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_forward_pass_returns_training_outputs_in_either_mode(mode):
    model = _glyph_model().train(mode == "train")
    output = model(torch.randn(6, 1, 32, 32), return_attention=True)
    assert isinstance(output, ModelOutput)
    assert output.embeddings.shape == (6, 16)
    assert output.backbone_logits.shape == (6, 5) and output.mpn_logits.shape == (6, 5)
    assert len(output.attention) == 1 and output.attention[0].shape == (2, 6, 6)


def test_retrieval_embeddings_are_the_normalised_backbone_embedding():
    model = _glyph_model().eval()
    images = torch.randn(6, 1, 32, 32)
    embeddings = model.retrieval_embeddings(images)
    torch.testing.assert_close(embeddings, F.normalize(model.embed(images), dim=1))
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(6))


def test_the_mpn_sees_only_the_direction_of_the_backbone_embeddings():
    model = _glyph_model().eval()
    embeddings = torch.randn(6, 16)
    scales = torch.rand(6, 1) * 10 + 0.1  # another length per sample
    unscaled, scaled = model.classify(embeddings), model.classify(embeddings * scales)
    torch.testing.assert_close(scaled.mpn_embeddings, unscaled.mpn_embeddings)
    torch.testing.assert_close(scaled.mpn_logits, unscaled.mpn_logits)


def test_the_temperature_is_the_losss_alone_the_model_returns_the_same_raw_logits_for_any():
    from mpn_tutorial.config import TrainConfig, create_model
    from mpn_tutorial.training import loss_function

    sharp, soft = (TrainConfig(embedding_dim=16, glyph_channels=(8,), mpn_ff_dim=16, temperature=t) for t in (0.1, 1.0))
    images, labels = torch.randn(6, 1, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2])
    outputs = [create_model(config, 3).eval()(images) for config in (sharp, soft)]
    torch.testing.assert_close(outputs[0].backbone_logits, outputs[1].backbone_logits)
    torch.testing.assert_close(outputs[0].mpn_logits, outputs[1].mpn_logits)
    loss, _ = loss_function(sharp)(outputs[0], labels)
    expected = sum(F.cross_entropy(logits / 0.1, labels, label_smoothing=0.1)
                   for logits in (outputs[0].backbone_logits, outputs[0].mpn_logits))
    torch.testing.assert_close(loss, expected)


def test_glyph_encoder_uses_global_max_pooling():
    encoder = GlyphEncoder(1, (4, 8)).eval()
    images = torch.randn(2, 1, 32, 32)
    expected = encoder.features(images).amax(dim=(2, 3))
    torch.testing.assert_close(encoder(images), expected)


def test_resnet_loads_imagenet_weights_from_a_local_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone("resnet18", pretrained=True, weights_path=path)
    torch.testing.assert_close(backbone.stem[0].weight, reference.conv1.weight)
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_resnet_without_reachable_weights_explains_how_to_get_them(monkeypatch):
    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError, match="pretrained=False"):
        ResNetBackbone("resnet18", pretrained=True)


def test_resnet_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = ResNetBackbone("resnet18", pretrained=False).train()
    checkpointed = ResNetBackbone("resnet18", pretrained=False, checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    plain(images).sum().backward()
    expected = plain.stem[0].weight.grad.clone()
    checkpointed(images).sum().backward()
    torch.testing.assert_close(checkpointed.stem[0].weight.grad, expected, rtol=1e-4, atol=1e-5)


def _each_output_depends_only_on_its_own_input(network) -> bool:
    x = torch.randn(5, 16)
    changed = x.clone()
    changed[1:] = torch.randn(4, 16)
    return torch.allclose(network(changed)[0], network(x)[0])


def test_the_messages_off_control_makes_each_output_depend_only_on_its_own_input():
    torch.manual_seed(0)
    off = MessagePassingNetwork(16, 1, 2, ff_dim=32, attention="none").eval()
    assert _each_output_depends_only_on_its_own_input(off)
    on = MessagePassingNetwork(16, 1, 2, ff_dim=32).eval()
    on.load_state_dict(off.state_dict())  # the control has the same parameters as the model it controls
    assert not _each_output_depends_only_on_its_own_input(on)


def test_the_warm_up_switch_turns_messages_off_and_back_on_with_the_same_parameters():
    torch.manual_seed(0)
    network = MessagePassingNetwork(16, 1, 2, ff_dim=32).eval()
    attention, keys = network.layers[0].attention, list(network.state_dict())
    network.set_pass_messages(False)
    assert _each_output_depends_only_on_its_own_input(network) and list(network.state_dict()) == keys
    network.set_pass_messages(True)
    assert network.layers[0].attention is attention and not _each_output_depends_only_on_its_own_input(network)


def test_a_network_built_as_the_messages_off_control_stays_off():
    network = MessagePassingNetwork(16, 1, 2, ff_dim=32, attention="none").eval()
    network.set_pass_messages(True)
    assert not network.passes_messages and _each_output_depends_only_on_its_own_input(network)


def test_every_attention_variant_starts_from_the_random_draws_of_the_published_one():
    starts = {}
    for kind in ("learned", "uniform", "oracle", "none"):
        torch.manual_seed(0)
        module = make_attention(kind, 8, 2)
        starts[kind] = module.v_proj.weight.clone(), torch.randn(3)  # and the next draw after it
    for weight, after in starts.values():
        torch.testing.assert_close(weight, starts["learned"][0])
        torch.testing.assert_close(after, starts["learned"][1])


def test_identity_values_make_a_message_the_attention_weighted_mean_of_the_inputs():
    torch.manual_seed(0)
    layer = MessagePassingLayer(8, 2, ff_dim=16, dropout=0.0,
                                attention=BatchAttention(8, 2, 0.0, identity_values=True)).eval()
    x = torch.randn(5, 8)
    _, attention = layer(x, return_attention=True)
    expected = torch.cat([attention[h] @ x[:, 4 * h : 4 * (h + 1)] for h in range(2)], dim=1)
    heads = [attention[h] @ layer.v_proj(x)[:, 4 * h : 4 * (h + 1)] for h in range(2)]
    torch.testing.assert_close(layer.out_proj(torch.cat(heads, dim=1)), expected)


def test_a_similarity_prior_starts_attention_as_the_scaled_similarity_of_the_inputs():
    torch.manual_seed(0)
    layer = MessagePassingLayer(8, 1, ff_dim=16, dropout=0.0,
                                attention=BatchAttention(8, 1, 0.0, similarity_prior=True)).eval()
    x = torch.randn(5, 8)
    _, attention = layer(x, return_attention=True)
    torch.testing.assert_close(attention[0], torch.softmax(x @ x.T / math.sqrt(8), dim=1))


def test_the_input_scale_multiplies_the_mpn_input_before_its_projection():
    torch.manual_seed(0)
    scaled = MessagePassingNetwork(8, 1, 2, ff_dim=16, dropout=0.0, input_scale=3.0).eval()
    plain = MessagePassingNetwork(8, 1, 2, ff_dim=16, dropout=0.0).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(5, 8)
    torch.testing.assert_close(scaled(x), plain(3.0 * x))


@pytest.mark.parametrize("arguments, message", [
    (dict(dim=16, num_heads=0), "at least 1"),
    (dict(dim=16, num_heads=3), "divisible"),
    (dict(dim=0, num_heads=1), "at least 1"),
    (dict(dim=16, num_heads=2, dropout=1.0), "dropout"),
])
def test_impossible_layer_shapes_are_refused_with_a_clear_message(arguments, message):
    with pytest.raises(ValueError, match=message):
        MessagePassingLayer(**arguments)


def test_a_zero_output_map_starts_the_layer_as_its_messages_off_control():
    torch.manual_seed(0)
    zero = MessagePassingLayer(8, 2, ff_dim=16, dropout=0.0, attention=BatchAttention(8, 2, 0.0, zero_out=True)).eval()
    off = MessagePassingLayer(8, 2, ff_dim=16, dropout=0.0, attention=NoMessages(BatchAttention(8, 2, 0.0))).eval()
    off.load_state_dict(zero.state_dict())
    off.attention.out_proj.weight.data.normal_()  # anything: messages off never uses it
    x = torch.randn(6, 8)
    torch.testing.assert_close(zero(x), off(x))


def _fixed_weights(kind, labels):
    model = _glyph_model(mpn_attention=kind).eval()
    model.provide_labels(labels)
    return model.classify(torch.randn(len(labels), 16), return_attention=True).attention[0]


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
    model = _glyph_model(mpn_attention="oracle").eval()
    with pytest.raises(ValueError, match="provide_labels"):
        model.classify(torch.randn(6, 16))


def test_uniform_attention_gives_every_sample_the_mean_of_the_batch():
    attention = _fixed_weights("uniform", torch.tensor([0, 0, 1, 1, 2, 2]))
    torch.testing.assert_close(attention, torch.full((2, 6, 6), 1 / 6))


def test_a_batch_of_graphs_gives_each_graph_what_it_gets_alone():
    network = MessagePassingNetwork(16, 2, 4, ff_dim=32, concat_layers=True).eval()
    graphs = torch.randn(3, 5, 16)
    torch.testing.assert_close(network(graphs), torch.stack([network(graph) for graph in graphs]))


def test_a_head_without_layers_or_input_map_classifies_the_normalised_embedding():
    model = _glyph_model(mpn_layers=0, mpn_input_map=False).eval()
    embeddings = torch.randn(6, 16)
    output = model.classify(embeddings)
    torch.testing.assert_close(output.mpn_embeddings, F.normalize(embeddings, dim=1))
    torch.testing.assert_close(output.mpn_logits, model.mpn.classifier(F.normalize(embeddings, dim=1)))


def test_the_decomposition_head_can_see_the_raw_embedding_through_a_plain_linear_classifier():
    model = _glyph_model(mpn_layers=0, mpn_input_map=False, mpn_normalize_input=False, mpn_classifier="linear").eval()
    embeddings = torch.randn(6, 16)
    assert isinstance(model.mpn.classifier, torch.nn.Linear)
    torch.testing.assert_close(model.classify(embeddings).mpn_logits, embeddings @ model.mpn.classifier.weight.T)


def test_the_cosine_classifier_gives_the_cosines_of_embedding_and_class_weights():
    classifier = CosineClassifier(8, 3)
    embeddings = torch.randn(5, 8) * 7
    expected = F.cosine_similarity(embeddings[:, None], classifier.weight[None], dim=-1)
    torch.testing.assert_close(classifier(embeddings), expected)
