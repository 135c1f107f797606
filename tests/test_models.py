import math

import pytest
import torch
import torch.nn.functional as F

from mpn_tutorial.backbones import GlyphEncoder, ResNetBackbone
from mpn_tutorial.errors import MissingFileError, WeightsUnavailableError
from mpn_tutorial.models import (
    BNNeckClassifier,
    MessagePassingLayer,
    MessagePassingNetwork,
    MetricLearningModel,
    ModelConfig,
    ModelOutput,
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
    network = MessagePassingNetwork(16, num_layers=2, num_heads=2, ff_dim=32, concat_layers=True)
    features = network(torch.randn(4, 16))
    assert features.shape == (4, 32) and network.out_dim == 32
    model = _glyph_model(mpn_layers=2, concat_layers=True)
    assert model.mpn_classifier.linear.in_features == 32


def test_bnneck_classifier_has_frozen_bias_and_no_linear_bias():
    classifier = BNNeckClassifier(16, 3)
    assert not classifier.norm.bias.requires_grad
    assert classifier.linear.bias is None
    assert isinstance(_glyph_model().mpn_classifier, BNNeckClassifier)


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
    images = torch.randn(6, 1, 32, 32)
    scales = torch.rand(6, 1) * 10 + 0.1  # another length per sample
    unscaled = model(images)
    scaled = model(images, gather=lambda embeddings: embeddings * scales)  # the embeddings lengthened on the way
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


def test_a_missing_weights_file_is_the_users_to_fix():
    with pytest.raises(MissingFileError, match="pretrained=False"):
        ResNetBackbone("resnet18", pretrained=True, weights_path="/no/such/weights.pth")


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


def test_a_batch_of_graphs_gives_each_graph_what_it_gets_alone():
    network = MessagePassingNetwork(16, 2, 4, ff_dim=32, concat_layers=True).eval()
    graphs = torch.randn(3, 5, 16)
    torch.testing.assert_close(network(graphs), torch.stack([network(graph) for graph in graphs]))


@pytest.mark.parametrize("arguments, message", [
    (dict(dim=16, num_heads=0), "at least 1"),
    (dict(dim=16, num_heads=3), "divisible"),
    (dict(dim=0, num_heads=1), "at least 1"),
    (dict(dim=16, num_heads=2, dropout=1.0), "dropout"),
])
def test_impossible_layer_shapes_are_refused_with_a_clear_message(arguments, message):
    with pytest.raises(ValueError, match=message):
        MessagePassingLayer(**arguments)


def test_concatenating_needs_a_layer():
    with pytest.raises(ValueError, match="1 with concat_layers"):
        MessagePassingNetwork(16, 0, 2, concat_layers=True)


def test_the_published_model_holds_only_the_published_parts():
    from mpn_tutorial.models import BatchAttention

    model = _glyph_model()
    assert type(model.mpn.layers[0].attention) is BatchAttention and isinstance(model.mpn.input_proj, torch.nn.Linear)
    assert type(model.classifier) is torch.nn.Linear


def test_from_the_model_to_the_attention_scores_is_at_most_four_calls():
    """A student follows model(images) to the line that computes q·kᵀ/√d in at most 4 calls of the
    library (torch's own module-call plumbing aside): the network, a layer, the attention, attention_weights."""
    import sys

    model = _glyph_model().eval()
    chains = []

    def watch(frame, event, argument):
        if event == "call" and frame.f_code.co_name == "attention_weights":
            chain, caller = [], frame
            while caller is not None:
                if caller.f_code.co_filename.endswith(("mpn_tutorial/models.py", "mpn_tutorial/controls.py")):
                    chain.append(caller.f_code.co_name)
                    if caller.f_code.co_name == "forward" and caller.f_locals.get("self") is model:
                        break
                caller = caller.f_back
            chains.append(chain)

    sys.setprofile(watch)
    try:
        model(torch.randn(6, 1, 32, 32), return_attention=True)
    finally:
        sys.setprofile(None)
    assert chains, "model(images, return_attention=True) never reached attention_weights"
    assert len(chains[0]) - 1 <= 4, chains[0]  # the calls below the model's own forward
