import dataclasses
import fractions

import pytest
import torch

from mpn_tutorial.callbacks import AttentionCapture, Callback, EmbeddingSnapshots
from mpn_tutorial.config import create_model
from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.evaluation import embed_dataset, evaluate, refine_embeddings
from mpn_tutorial.metrics import recall_at_k
from mpn_tutorial.presets import get_preset
from mpn_tutorial.tools.checkpoints import load_checkpoint, load_model
from mpn_tutorial.tools.run_store import train_cached
from mpn_tutorial.training import train


@pytest.fixture(scope="module")
def tiny(data_root):
    """A small glyph MPN run: 3 epochs of 4 batches, a narrow network."""
    return get_preset(
        "glyphs", data_root=str(data_root), epochs=3, batches_per_epoch=4, glyph_channels=(8, 16),
        embedding_dim=16, mpn_ff_dim=32, eval_batch_size=2048,
    )


@pytest.fixture(scope="module")
def tiny_datasets(tiny):
    return build_datasets(tiny)


def _without_timing(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "train_seconds")} for row in history]


class _Interrupt(Callback):
    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def on_epoch_end(self, state):
        if state.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_best_checkpoint_is_chosen_by_validation_recall_not_by_the_last_epoch(tiny, tiny_datasets, tmp_path,
                                                                              monkeypatch):
    import mpn_tutorial.training as training

    scripted, evaluate_for_real, models = iter([0.30, 0.90, 0.50]), training.evaluate, []

    def evaluate_with_a_peak(model, *args, **kwargs):  # validation R@1 peaks at epoch 2 of 3
        models.append({name: value.clone() for name, value in model.state_dict().items()})
        return {**evaluate_for_real(model, *args, **kwargs), "recall@1": next(scripted)}

    monkeypatch.setattr(training, "evaluate", evaluate_with_a_peak)
    result = train(tiny, datasets=tiny_datasets, progress=False, checkpoint_dir=tmp_path, evaluate_test=False)
    assert result.best_epoch == 2 and result.val_metrics["recall@1"] == 0.90
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    for name, value in result.model.state_dict().items():  # the returned model is epoch 2's, not the last one
        assert torch.equal(value, models[1][name]), name
    assert not all(torch.equal(value, models[2][name]) for name, value in result.model.state_dict().items())
    assert not any(key.startswith("test") for row in result.history for key in row)


def test_nmi_clusters_the_evaluated_classes_not_the_training_classes(tiny, tiny_datasets, monkeypatch):
    import mpn_tutorial.metrics as metrics

    asked, nmi = [], metrics.nmi

    def counting_nmi(embeddings, labels, n_clusters=None, **options):
        asked.append((n_clusters, len(torch.unique(torch.as_tensor(labels)))))
        return nmi(embeddings, labels, n_clusters, **options)

    monkeypatch.setattr(metrics, "nmi", counting_nmi)
    result = train(tiny, datasets=tiny_datasets, progress=False, compute_nmi=True)
    evaluate(result.model, tiny_datasets.val, compute_nmi=True)
    assert len(asked) == 2 and all(given in (None, present) for given, present in asked), asked
    assert asked[0][1] == tiny_datasets.test.num_classes != tiny_datasets.train.num_classes


def test_a_saved_model_reloads_with_the_same_embeddings(tiny, tiny_datasets, tmp_path):
    result = train(tiny, datasets=tiny_datasets, progress=False, checkpoint_dir=tmp_path, evaluate_test=False)
    model, config = load_model(tmp_path / "best.pt")
    images, _ = tiny_datasets.val.batch(range(8))
    torch.testing.assert_close(model.retrieval_embeddings(images), result.model.eval().retrieval_embeddings(images))
    assert config == tiny


def test_a_checkpoint_written_before_a_setting_existed_resumes_with_its_default(tiny, tiny_datasets, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(tiny, callbacks=[_Interrupt(at_epoch=1)], datasets=tiny_datasets, progress=False,
              checkpoint_dir=tmp_path, evaluate_test=False)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    del checkpoint["config"]["message_warmup_epochs"]  # an older version had no such field
    torch.save(checkpoint, tmp_path / "last.pt")
    resumed = train(tiny, datasets=tiny_datasets, progress=False, checkpoint_dir=tmp_path, resume=True,
                    evaluate_test=False)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]


def test_resuming_with_another_preset_is_refused(tiny, tiny_datasets, tmp_path):
    train(tiny.replace(epochs=1), datasets=tiny_datasets, progress=False, checkpoint_dir=tmp_path,
          evaluate_test=False)
    with pytest.raises(ValueError, match="trained with preset 'glyphs'"):
        train(tiny.replace(preset="glyphs-attention"), datasets=tiny_datasets, checkpoint_dir=tmp_path, resume=True,
              progress=False)


def test_a_checkpoint_holding_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    # any class outside torch's weights-only allowlist stands for code a pickle could run
    torch.save({"format": 1, "config": {}, "payload": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match="not a readable mpn_tutorial checkpoint"):
        load_checkpoint(path)


class _PoisonedBatches:
    """Wraps a dataset; the third batch is NaN."""

    in_memory = True

    def __init__(self, dataset):
        self.dataset, self.calls = dataset, 0
        self.labels, self.num_classes = dataset.labels, dataset.num_classes

    def __len__(self):
        return len(self.dataset)

    def batch(self, indices):
        self.calls += 1
        images, labels = self.dataset.batch(indices)
        return (images * float("nan") if self.calls == 3 else images), labels


def test_nan_embeddings_stop_training_with_the_step_number(tiny, tiny_datasets):
    poisoned = dataclasses.replace(tiny_datasets, train=_PoisonedBatches(tiny_datasets.train))
    with pytest.raises(FloatingPointError, match="step 3"):
        train(tiny, datasets=poisoned, progress=False)


def test_snapshots_and_attention_are_recorded_before_training_and_after_every_epoch(tiny, tiny_datasets):
    snapshots = EmbeddingSnapshots(tiny_datasets.val)
    images, labels = tiny_datasets.val.batch(range(12))
    attention = AttentionCapture(images, labels)
    train(tiny, callbacks=[snapshots, attention], datasets=tiny_datasets, progress=False, evaluate_test=False)
    assert [epoch for epoch, _ in snapshots.snapshots] == [0, 1, 2, 3]
    assert snapshots.snapshots[-1][1].shape == (len(tiny_datasets.val), 16)
    assert [epoch for epoch, _ in attention.snapshots] == [0, 1, 2, 3]
    assert attention.snapshots[0][1].shape == (1, 2, 12, 12)


def test_callbacks_do_not_change_the_training_run(tiny, tiny_datasets):
    plain = train(tiny, datasets=tiny_datasets, progress=False, evaluate_test=False)
    watched = train(tiny, callbacks=[EmbeddingSnapshots(tiny_datasets.val)], datasets=tiny_datasets,
                    progress=False, evaluate_test=False)
    assert _without_timing(plain.history) == _without_timing(watched.history)


@pytest.mark.parametrize("loss, term", [("contrastive", "contrastive"), ("triplet", "triplet"), ("ce", "backbone_ce")])
def test_every_loss_trains_with_the_same_loop_and_logs_its_own_term(tiny, tiny_datasets, loss, term):
    config = tiny.replace(loss=loss, epochs=1)
    start = create_model(config, tiny_datasets.train.num_classes).state_dict()
    result = train(config, datasets=tiny_datasets, progress=False, evaluate_test=False)
    assert result.model.mpn is None and (result.model.classifier is None) == (loss != "ce")
    assert list(result.history[0]["train"]) == [term]
    assert not torch.equal(result.model.state_dict()["embedding.weight"], start["embedding.weight"])  # it trained
    assert result.val_metrics == evaluate(result.model, tiny_datasets.val)  # and is measured as a model


@pytest.mark.slow
def test_short_glyph_training_beats_an_untrained_encoder_on_test_classes(data_root):
    config = get_preset("glyphs", data_root=str(data_root), epochs=3, batches_per_epoch=50)
    datasets = build_datasets(config)
    untrained = evaluate(create_model(config, datasets.train.num_classes), datasets.test, ks=(1,))
    trained = train(config, datasets=datasets, progress=False)
    assert untrained["recall@1"] < 0.4
    assert trained.test_metrics["recall@1"] > untrained["recall@1"] + 0.05
    assert evaluate(trained.model, datasets.test, ks=(1,))["recall@1"] == trained.test_metrics["recall@1"]


def test_a_cached_run_returns_the_stored_model_history_and_recordings(tiny, tiny_datasets, tmp_path):
    images, labels = tiny_datasets.val.batch(range(12))
    first_capture = AttentionCapture(images, labels)
    first = train_cached(tiny, tmp_path, callbacks=[first_capture], datasets=tiny_datasets, progress=False)
    second_capture = AttentionCapture(images, labels)
    second = train_cached(tiny, tmp_path, callbacks=[second_capture], datasets=None, progress=False)
    assert second.history == first.history and second.test_metrics == first.test_metrics
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name])
    assert [e for e, _ in second_capture.snapshots] == [e for e, _ in first_capture.snapshots]
    assert (second_capture.snapshots[-1][1] == first_capture.snapshots[-1][1]).all()


def test_a_cached_run_without_the_asked_recordings_trains_again(tiny, tiny_datasets, tmp_path):
    train_cached(tiny, tmp_path, datasets=tiny_datasets, progress=False)
    snapshots = EmbeddingSnapshots(tiny_datasets.val)
    train_cached(tiny, tmp_path, callbacks=[snapshots], datasets=tiny_datasets, progress=False)
    assert [epoch for epoch, _ in snapshots.snapshots] == [0, 1, 2, 3]
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_a_cached_run_is_found_from_another_working_directory(tiny, tiny_datasets, tmp_path):
    first = train_cached(tiny, tmp_path, datasets=tiny_datasets, progress=False)
    # where a run was launched from is not part of what it computes
    elsewhere = tiny.replace(data_root="../" + tiny.data_root, eval_batch_size=64)
    second = train_cached(elsewhere, tmp_path, datasets=tiny_datasets, progress=False)
    assert second.seconds == first.seconds  # loaded, not trained again


def test_evaluation_with_test_time_refinement_uses_the_refined_embeddings(tiny, tiny_datasets):
    result = train(tiny.replace(epochs=1), datasets=tiny_datasets, progress=False, evaluate_test=False)
    plain = evaluate(result.model, tiny_datasets.val, ks=(1,))
    refined = evaluate(result.model, tiny_datasets.val, ks=(1,), refine_k=5)
    embeddings, labels = embed_dataset(result.model, tiny_datasets.val)
    expected = recall_at_k(refine_embeddings(result.model, embeddings, k=5), labels, ks=(1,))[1]
    assert refined["recall@1"] == expected and plain["recall@1"] != expected


def test_messages_stay_off_during_the_warm_up_and_start_after_it(tiny, tiny_datasets):
    from mpn_tutorial.controls import passes_messages

    class Recorder(Callback):
        def __init__(self):
            self.passing = []

        def on_epoch_end(self, state):
            self.passing.append(passes_messages(state.model))

    recorder = Recorder()
    train(tiny.replace(message_warmup_epochs=2), callbacks=[recorder], datasets=tiny_datasets, progress=False,
          evaluate_test=False)
    assert recorder.passing == [False, False, True]


def test_the_attention_maps_learn_only_once_the_warm_up_is_over(tiny, tiny_datasets):
    class Weights(Callback):
        def __init__(self):
            self.seen = []

        def on_train_start(self, state):
            self.seen.append(state.model.mpn.layers[0].q_proj.weight.detach().clone())

        on_epoch_end = on_train_start

    weights = Weights()
    train(tiny.replace(message_warmup_epochs=2), callbacks=[weights], datasets=tiny_datasets, progress=False,
          evaluate_test=False)
    start, after_1, after_2, after_3 = weights.seen
    assert torch.equal(start, after_1) and torch.equal(start, after_2) and not torch.equal(after_2, after_3)


def test_the_best_model_is_loaded_again_after_the_epochs_the_release_reloads_it(tiny, tiny_datasets, monkeypatch):
    import mpn_tutorial.training as training

    scripted, evaluate_for_real, ended, started, built = iter([0.90, 0.10, 0.20]), training.evaluate, [], [], []

    def evaluate_with_a_peak(model, *args, **kwargs):  # validation R@1 peaks at epoch 1
        ended.append({name: value.clone() for name, value in model.state_dict().items()})
        return {**evaluate_for_real(model, *args, **kwargs), "recall@1": next(scripted)}

    def batches_watched(*args, **kwargs):  # the weights each epoch starts its first step from
        started.append({name: value.clone() for name, value in built[0].state_dict().items()})
        yield from training.iterate_batches.__wrapped__(*args, **kwargs)

    batches_watched.__wrapped__ = training.iterate_batches
    monkeypatch.setattr(training, "evaluate", evaluate_with_a_peak)
    monkeypatch.setattr(training, "iterate_batches", batches_watched)
    monkeypatch.setattr(training, "create_model", lambda *args: built.append(create_model(*args)) or built[-1])
    train(tiny.replace(reload_best_after=(2,)), datasets=tiny_datasets, progress=False, evaluate_test=False)
    def same(first, second) -> bool:
        return all(torch.equal(first[name], second[name]) for name in first)

    assert same(started[1], ended[0])  # epoch 2 goes on from epoch 1, as usual
    assert same(started[2], ended[0]) and not same(started[2], ended[1])  # epoch 3 from the best, epoch 1


def test_the_release_variant_of_sop_trains_its_backbone_cross_entropy_alone():
    from mpn_tutorial.presets import get_preset

    release, paper = get_preset("sop-release"), get_preset("sop")
    assert set(release.differences(paper)) == {"preset", "loss"} and release.loss == "ce" and paper.loss == "mpn"
    assert paper.reload_best_after == (30, 50) and paper.lr_decay_epochs == (30,)
