"""The published recipe end to end on a fake CUB-200-2011 tree, on CPU (small images, ResNet-18)."""

from test_benchmark_readers import make_cub

from mpn_tutorial.tools.cli import main

TRAIN_CLASSES = tuple(range(1, 13))  # 12 of CUB's training classes 1..100; 2 become validation classes
TEST_CLASSES = (101, 102, 103, 104)


def test_the_cub_preset_trains_checkpoints_and_evaluates_on_a_fake_tree(tmp_path, capsys):
    root = make_cub(tmp_path / "CUB_200_2011", classes=TRAIN_CLASSES + TEST_CLASSES, per_class=3)
    runs = tmp_path / "runs"
    status = main(["train", "--preset", "cub", "--data-root", str(root), "--no-pretrained", "--backbone", "resnet18",
                   "--image-size", "64", "--epochs", "2", "--batches-per-epoch", "2", "--device", "cpu",
                   "--num-workers", "0", "--checkpoint-dir", str(runs), "--no-progress"])
    assert status == 0
    trained = capsys.readouterr().out
    assert "test  R@1" in trained and "NMI" in trained
    assert (runs / "best.pt").exists() and (runs / "last.pt").exists() and (runs / "metrics.csv").exists()
    assert len((runs / "metrics.csv").read_text().splitlines()) == 3  # header + one row per epoch

    assert main(["evaluate", "--checkpoint", str(runs / "best.pt"), "--preset", "cub"]) == 0
    evaluated = capsys.readouterr().out
    assert "cub test classes (12 queries)" in evaluated and "MAP@R" in evaluated


def test_evaluating_with_another_preset_is_refused(tmp_path, capsys):
    root = make_cub(tmp_path / "CUB_200_2011", classes=TRAIN_CLASSES + TEST_CLASSES, per_class=3)
    runs = tmp_path / "runs"
    main(["train", "--preset", "cub", "--data-root", str(root), "--no-pretrained", "--backbone", "resnet18",
          "--image-size", "64", "--epochs", "1", "--batches-per-epoch", "1", "--device", "cpu", "--num-workers", "0",
          "--checkpoint-dir", str(runs), "--no-progress", "--no-nmi"])
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(runs / "best.pt"), "--preset", "sop"]) == 2
    assert "trained with preset 'cub', not 'sop'" in capsys.readouterr().err


def test_training_without_the_dataset_explains_how_to_get_it(tmp_path, capsys):
    status = main(["train", "--preset", "cub", "--data-root", str(tmp_path / "missing"), "--no-pretrained",
                   "--device", "cpu", "--checkpoint-dir", str(tmp_path / "runs")])
    assert status == 2
    message = capsys.readouterr().err
    assert "images.txt" in message and "fetch" in message
