"""Run by tests/test_distributed.py under torchrun: one distributed training step, results to a file.

Usage: torchrun --nproc_per_node=2 tests/distributed_step_worker.py OUTPUT_DIR
Each rank writes OUTPUT_DIR/rank{R}.pt with the loss and every parameter's gradient after DDP's
gradient averaging.
"""

import sys
from pathlib import Path

import torch

from mpn_tutorial.tools.distributed import from_environment
from mpn_tutorial.training import create_model, loss_function

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import CONFIG, NUM_CLASSES, global_batch  # noqa: E402


def main() -> None:
    output_dir = Path(sys.argv[1])
    context = from_environment(CONFIG)
    model = create_model(CONFIG, NUM_CLASSES).train()
    ddp_model = context.wrap(model)
    images, labels = global_batch()
    size = len(labels) // context.world_size
    local = slice(context.rank * size, (context.rank + 1) * size)
    torch.manual_seed(1)  # every rank draws the same dropout masks, as one process would
    output = ddp_model(images[local], gather=context.gather)
    loss, _ = loss_function(CONFIG)(output, context.gather_labels(labels[local]))
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in ddp_model.module.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "gradients": gradients}, output_dir / f"rank{context.rank}.pt")
    context.close()


if __name__ == "__main__":
    main()
