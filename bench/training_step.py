"""One glyph-preset training step: cross-entropy + MPN vs the same backbone with cross-entropy only.

A step is forward + backward + optimizer step on one P×K batch (8 classes × 6 glyphs of 32 px,
the ``glyphs`` preset). Both models are built by ``mpn_tutorial.config.create_model`` from the
same preset, so the only difference is the message-passing network (1 layer, 2 heads, FFN 512) and
its classifier. Batches are drawn by ``PKSampler`` and loaded with ``dataset.batch`` beforehand, so
the timing covers the step only.

Prints ``training_step: mpn_over_ce: X`` (target <= 1.15). Run with ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from benchlib import REPO_ROOT, print_header, print_ratio, time_interleaved

from mpn_tutorial.config import TrainConfig, create_model
from mpn_tutorial.data import PKSampler
from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.models import ModelOutput
from mpn_tutorial.presets import get_preset
from mpn_tutorial.training import loss_function, make_optimizer

# For --breakdown: the same optimizers with explicit options (e.g. torch's default for-loop Adam) to
# compare with what mpn_tutorial.training.make_optimizer builds (fused Adam).
OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}


class Step:
    """One training step of ``config``'s model on the next batch (cycling), and its parts for ``--breakdown``."""

    def __init__(self, config: TrainConfig, num_classes: int, batches: list[tuple[torch.Tensor, torch.Tensor]],
                 **optimizer_options) -> None:
        self.model = create_model(config, num_classes).train()
        self.objective = loss_function(config)
        if optimizer_options:
            self.optimizer = OPTIMIZERS[config.optimizer](self.model.parameters(), lr=config.lr,
                                                          weight_decay=config.weight_decay, **optimizer_options)
        else:  # what training uses
            self.optimizer = make_optimizer(config, self.model)
        self.batches = itertools.cycle(batches)
        self.fixed_labels = batches[0][1]
        self.fixed_embeddings = torch.randn(len(self.fixed_labels), config.embedding_dim, requires_grad=True)

    def __call__(self) -> None:
        images, labels = next(self.batches)
        loss, _ = self.objective(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def on_embeddings_only(self) -> None:
        """Forward + backward of what sits on the embedding (classifier, MPN) and the loss: no backbone."""
        self.model.zero_grad(set_to_none=True)
        embeddings = self.fixed_embeddings
        refined = self.model.mpn(self.model.mpn_input(embeddings))
        output = ModelOutput(embeddings, self.model.classifier(embeddings), refined, self.model.mpn_classifier(refined))
        loss, _ = self.objective(output, self.fixed_labels)
        loss.backward()

    def optimizer_only(self) -> None:
        """The optimizer step alone (call :meth:`fill_gradients` once first: every parameter needs a gradient)."""
        self.optimizer.step()

    def fill_gradients(self) -> None:
        """One forward + backward, so that every parameter holds a gradient for :meth:`optimizer_only`."""
        images, labels = next(self.batches)
        self.objective(self.model(images), labels)[0].backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats: check that the script runs")
    parser.add_argument("--data-root", default=str(REPO_ROOT / "data"), help="where the glyph cache lives")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--batches", type=int, default=16, help="distinct batches to cycle through")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of the extra MPN cost")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats, args.batches = 1, 3, 2

    mpn_config = get_preset("glyphs", data_root=args.data_root, loss="mpn")
    ce_config = mpn_config.replace(loss="ce")
    datasets = build_datasets(mpn_config)
    train = datasets.train
    sampler = PKSampler(train.labels, mpn_config.classes_per_batch, mpn_config.samples_per_class,
                        seed=0, num_batches=args.batches)
    batches = [train.batch(indices) for indices in sampler]
    print_header("glyph-preset training step (forward + backward + optimizer step)", {
        "batch": f"{mpn_config.classes_per_batch} x {mpn_config.samples_per_class} glyphs of "
                 f"{mpn_config.image_size} px, {train.num_classes} training classes",
        "model": f"{mpn_config.backbone} {mpn_config.glyph_channels} -> {mpn_config.embedding_dim}-d; MPN "
                 f"{mpn_config.mpn_layers} layer x {mpn_config.mpn_heads} heads, FFN {mpn_config.mpn_ff_dim}",
        "optimizer": mpn_config.optimizer,
        "timing": f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up",
    })
    mpn, ce = Step(mpn_config, train.num_classes, batches), Step(ce_config, train.num_classes, batches)
    seconds = time_interleaved({"mpn": mpn, "ce": ce}, warmup=args.warmup, repeats=args.repeats)
    print("# training_step: " + ", ".join(f"{name} {value * 1e3:.2f} ms" for name, value in seconds.items()))
    print_ratio("training_step", "mpn_over_ce", seconds["mpn"] / seconds["ce"])
    if args.breakdown:
        breakdown(mpn_config, ce_config, train.num_classes, batches, mpn, ce, args)


def breakdown(mpn_config: TrainConfig, ce_config: TrainConfig, num_classes: int, batches, mpn: Step, ce: Step,
              args: argparse.Namespace) -> None:
    """Where the extra time of the MPN step goes: its heads' forward+backward, and the optimizer step.

    Also the whole-step ratio with torch's CPU default Adam (a Python loop of ~8 tensor operations
    per parameter tensor) instead of the fused Adam that ``make_optimizer`` builds.
    """
    optimizer_steps = {}
    for loss, config in (("mpn", mpn_config), ("ce", ce_config)):
        for kind, options in (("fused", {}), ("for_loop", {"foreach": False})):
            step = Step(config, num_classes, batches, **options)
            step.fill_gradients()
            optimizer_steps[f"{loss}_{kind}_optimizer_step"] = step.optimizer_only
    loop_mpn = Step(mpn_config, num_classes, batches, foreach=False)
    loop_ce = Step(ce_config, num_classes, batches, foreach=False)
    seconds = time_interleaved({
        "mpn_on_embeddings_fwd_bwd": mpn.on_embeddings_only, "ce_on_embeddings_fwd_bwd": ce.on_embeddings_only,
        **optimizer_steps,
        "mpn_step_for_loop_adam": loop_mpn, "ce_step_for_loop_adam": loop_ce,
    }, warmup=args.warmup, repeats=args.repeats)
    for name, value in seconds.items():
        print(f"# breakdown {name}: {value * 1e3:.2f} ms")
    counts = {name: len(list(step.model.parameters())) for name, step in (("mpn", mpn), ("ce", ce))}
    print(f"# breakdown parameter tensors: mpn model {counts['mpn']}, ce model {counts['ce']}")
    print_ratio("training_step", "mpn_over_ce_with_for_loop_adam",
                seconds["mpn_step_for_loop_adam"] / seconds["ce_step_for_loop_adam"])


if __name__ == "__main__":
    main()
