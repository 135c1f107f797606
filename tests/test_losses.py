import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mpn_tutorial.losses import ContrastiveLoss, SmoothedCrossEntropy, TripletLoss


def _circle(*degrees):
    """Unit vectors at the given angles: distances are 2 sin(angle difference / 2)."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


def _distance(a, b):
    return 2 * math.sin(math.radians(abs(a - b)) / 2)


ANGLES = (0, 60, 180, 90)
LABELS = torch.tensor([0, 0, 1, 1])


def test_contrastive_loss_matches_hand_computation():
    embeddings = _circle(0, 60, 180)
    value = ContrastiveLoss(margin=1.9)(embeddings, torch.tensor([0, 0, 1]))
    # positives (0,1),(1,0): d = 1; negatives (0,2),(2,0): d = 2 -> 0; (1,2),(2,1): d = sqrt(3)
    expected = 1.0 + 2 * (1.9 - math.sqrt(3)) ** 2 / 4
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_batch_hard_triplet_loss_matches_hand_computation():
    value = TripletLoss(margin=1.0, mining="hard")(_circle(*ANGLES), LABELS)
    d = {(i, j): _distance(ANGLES[i], ANGLES[j]) for i in range(4) for j in range(4)}
    per_anchor = [
        d[0, 1] - min(d[0, 2], d[0, 3]) + 1,
        d[1, 0] - min(d[1, 2], d[1, 3]) + 1,
        d[2, 3] - min(d[2, 0], d[2, 1]) + 1,
        d[3, 2] - min(d[3, 0], d[3, 1]) + 1,
    ]
    assert value.item() == pytest.approx(sum(max(0, v) for v in per_anchor) / 4, rel=1e-9)


def _reference_triplet(embeddings, labels, margin, mining):
    """Plain-Python enumeration of the triplets each strategy uses."""
    n = len(labels)
    d = [[torch.dist(embeddings[i], embeddings[j]).item() for j in range(n)] for i in range(n)]
    losses = []
    for a, p in itertools.permutations(range(n), 2):
        if labels[a] != labels[p]:
            continue
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        if mining == "all":
            losses += [d[a][p] - d[a][k] + margin for k in negatives if d[a][p] - d[a][k] + margin > 0]
        else:
            semihard = [k for k in negatives if d[a][p] < d[a][k] < d[a][p] + margin]
            if semihard:
                losses.append(d[a][p] - min(d[a][k] for k in semihard) + margin)
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("mining", ["all", "semihard"])
def test_triplet_mining_matches_plain_enumeration(mining):
    generator = torch.Generator().manual_seed(3)
    embeddings = F.normalize(torch.randn(12, 3, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    value = TripletLoss(margin=0.5, mining=mining)(embeddings, labels)
    assert value.item() == pytest.approx(_reference_triplet(embeddings, labels, 0.5, mining), rel=1e-6)


def test_mine_returns_the_triplets_the_loss_uses():
    anchors, positives, negatives = TripletLoss(margin=1.0, mining="hard").mine(_circle(*ANGLES), LABELS)
    assert anchors.tolist() == [0, 1, 2, 3]
    assert positives.tolist() == [1, 0, 3, 2]
    assert negatives.tolist() == [3, 3, 1, 1]


def test_smoothed_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    value = SmoothedCrossEntropy(eps=0.1, temperature=0.5)(logits, torch.tensor([0]))
    log_probabilities = torch.log_softmax(logits / 0.5, dim=1)[0]
    expected = -((1 - 0.1 + 0.1 / 3) * log_probabilities[0] + 0.1 / 3 * (log_probabilities[1] + log_probabilities[2]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def _degenerate_cases():
    yield "one class", torch.randn(4, 8), torch.zeros(4, dtype=torch.long)
    yield "all different classes", torch.randn(4, 8), torch.arange(4)
    yield "single sample", torch.randn(1, 8), torch.tensor([3])
    yield "identical points", torch.ones(4, 8), torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    "loss", [TripletLoss(mining="all"), TripletLoss(mining="hard"), TripletLoss(mining="semihard")], ids=str
)
@pytest.mark.parametrize("name, embeddings, labels", list(_degenerate_cases()))
def test_triplet_loss_on_degenerate_batches_is_finite_and_backpropagates(loss, name, embeddings, labels):
    embeddings = embeddings.clone().requires_grad_(True)
    value = loss(embeddings, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(embeddings.grad).all()
    if name != "identical points":
        assert value.item() == 0.0


@pytest.mark.parametrize("name, embeddings, labels", list(_degenerate_cases()))
def test_contrastive_loss_on_degenerate_batches_is_finite_and_backpropagates(name, embeddings, labels):
    embeddings = embeddings.clone().requires_grad_(True)
    value = ContrastiveLoss()(embeddings, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(embeddings.grad).all()
    if name == "single sample":
        assert value.item() == 0.0


def test_smoothed_cross_entropy_on_an_empty_batch_is_zero_and_backpropagates():
    logits = torch.zeros(0, 5, requires_grad=True)
    value = SmoothedCrossEntropy()(logits, torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0


def test_labels_of_the_wrong_length_get_a_clear_error():
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        TripletLoss()(torch.randn(4, 8), torch.tensor([0, 1, 0]))


def test_labels_outside_the_classifier_get_a_clear_error():
    with pytest.raises(ValueError, match="0..2"):
        SmoothedCrossEntropy()(torch.randn(2, 3), torch.tensor([0, 3]))


def test_unknown_mining_strategy_is_refused():
    with pytest.raises(ValueError, match="mining must be one of"):
        TripletLoss(mining="easy")


def test_the_objective_weights_both_terms_and_divides_both_logits_by_the_temperature():
    from mpn_tutorial.losses import MessagePassingObjective

    torch.manual_seed(0)
    backbone, mpn, labels = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    objective = MessagePassingObjective(temperature=0.5, label_smoothing=0.1, backbone_loss_weight=2.0,
                                        mpn_loss_weight=0.25)
    expected = (2.0 * torch.nn.functional.cross_entropy(backbone / 0.5, labels, label_smoothing=0.1)
                + 0.25 * torch.nn.functional.cross_entropy(mpn / 0.5, labels, label_smoothing=0.1))
    torch.testing.assert_close(objective(backbone, mpn, labels), expected)


def test_the_objective_takes_the_names_and_defaults_of_the_run_settings():
    import inspect

    from mpn_tutorial.config import TrainConfig
    from mpn_tutorial.losses import MessagePassingObjective

    defaults = TrainConfig()
    for name, parameter in inspect.signature(MessagePassingObjective).parameters.items():
        assert hasattr(defaults, name), f"{name} is not the name of a run setting"
        if parameter.default is not inspect.Parameter.empty:
            assert parameter.default == getattr(defaults, name), name


def test_the_mpn_term_alone_trains_the_backbone_through_the_attention():
    from mpn_tutorial.losses import MessagePassingObjective
    from mpn_tutorial.models import MetricLearningModel, ModelConfig

    torch.manual_seed(0)
    model = MetricLearningModel(ModelConfig(embedding_dim=8, glyph_channels=(4,), mpn_layers=1, mpn_heads=2,
                                            mpn_ff_dim=16), num_classes=3).train()
    output = model(torch.randn(6, 1, 16, 16))
    objective = MessagePassingObjective(temperature=0.2, label_smoothing=0.1, backbone_loss_weight=0.0)
    loss = objective(output.backbone_logits, output.mpn_logits, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert model.classifier.weight.grad is None or not model.classifier.weight.grad.any()
    assert model.backbone.features[0].weight.grad.abs().sum() > 0  # the MPN's loss reaches the first conv
    assert model.mpn.layers[0].q_proj.weight.grad.abs().sum() > 0  # and the attention's scores


def test_objective_weights_that_train_nothing_are_refused():
    from mpn_tutorial.losses import MessagePassingObjective

    with pytest.raises(ValueError, match="not both zero"):
        MessagePassingObjective(0.1, 0.1, backbone_loss_weight=0.0, mpn_loss_weight=0.0)
