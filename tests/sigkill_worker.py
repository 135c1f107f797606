"""Run by tests/test_command_line.py: a tiny glyph run that can kill itself (SIGKILL) mid-epoch.

Usage: python sigkill_worker.py DATA_ROOT RUN_FOLDER [--kill-at-step N] [--resume]
With --kill-at-step, the process sends itself SIGKILL while loading batch N (no cleanup, no
``finally``: what a power cut or the OOM killer would do).
"""

import argparse
import os
import signal

from mpn_tutorial.callbacks import CSVLogger
from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.presets import get_preset
from mpn_tutorial.training import train


class KillingBatches:
    """Wraps an in-memory dataset; loading batch ``kill_at`` kills the process."""

    in_memory = True

    def __init__(self, dataset, kill_at: int) -> None:
        self.dataset, self.kill_at, self.calls = dataset, kill_at, 0
        self.labels, self.num_classes = dataset.labels, dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.dataset.batch(indices)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_root")
    parser.add_argument("folder")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    config = get_preset("glyphs", data_root=args.data_root, epochs=4, batches_per_epoch=4, lr_decay_epochs=(3,),
                        glyph_channels=(8, 16), embedding_dim=16, mpn_ff_dim=32, eval_batch_size=2048)
    datasets = build_datasets(config)
    if args.kill_at_step:
        datasets.train = KillingBatches(datasets.train, args.kill_at_step)
    train(config, callbacks=[CSVLogger(f"{args.folder}/metrics.csv")], checkpoint_dir=args.folder,
          resume=args.resume, datasets=datasets, progress=False, evaluate_test=False)


if __name__ == "__main__":
    main()
