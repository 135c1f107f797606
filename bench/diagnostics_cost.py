"""What the per-epoch attention diagnostics cost, as a share of a glyph epoch (``--preset glyphs``).

Every MPN run measures its attention after each epoch (``evaluation.attention_diagnostics`` on
``TrainConfig.attention_batches`` fixed validation-class P×K batches: share per layer and head,
self-weight, score spread, the backbone-similarity reference). This times that measurement and one
training epoch of the glyph preset (75 steps), round-robin, and prints
``diagnostics: seconds_per_epoch: X`` and ``diagnostics: share_of_a_glyph_epoch: Y``.

    python bench/diagnostics_cost.py
"""

from __future__ import annotations

import torch
from benchlib import REPO_ROOT, print_header, print_ratio, time_interleaved

from mpn_tutorial.config import create_model
from mpn_tutorial.data.build import build_datasets, iterate_batches
from mpn_tutorial.data.sampler import PKSampler
from mpn_tutorial.evaluation import attention_diagnostics, diagnostic_batches
from mpn_tutorial.presets import get_preset
from mpn_tutorial.training import loss_function, make_optimizer


def main() -> None:
    config = get_preset("glyphs", data_root=str(REPO_ROOT / "data"))
    datasets = build_datasets(config)
    model = create_model(config, datasets.train.num_classes)
    optimizer, compute_loss = make_optimizer(config, model), loss_function(config)
    sampler = PKSampler(datasets.train.labels, config.classes_per_batch, config.samples_per_class,
                        num_batches=config.batches_per_epoch)
    batches = diagnostic_batches(datasets.val, config.attention_batches, config.classes_per_batch,
                                 config.samples_per_class)

    def epoch() -> None:
        model.train()
        for images, labels in iterate_batches(datasets.train, sampler):
            loss, _ = compute_loss(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    print_header("attention diagnostics per epoch (glyphs)", {"batches": config.attention_batches})
    seconds = time_interleaved({"epoch": epoch, "diagnostics": lambda: attention_diagnostics(model, batches)},
                               warmup=1, repeats=3)
    print_ratio("diagnostics", "seconds_per_epoch", seconds["diagnostics"])
    print_ratio("diagnostics", "share_of_a_glyph_epoch", seconds["diagnostics"] / seconds["epoch"])
    torch.set_grad_enabled(True)


if __name__ == "__main__":
    main()
