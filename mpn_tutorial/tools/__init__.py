"""The machinery that runs, ships and measures what the notebooks teach; a student never has to look here.

- ``cli``, ``commands``: the command line (``python -m mpn_tutorial COMMAND``)
- ``settings``: how a run's settings are declared (range, help, flag) and checked
- ``runtime``: CPU threads, seeds and the device, pinned by the entry points
- ``atomic``, ``checkpoints``, ``run_store``: files written atomically, checkpoints, the notebooks' store of runs
- ``distributed``: multi-GPU training with message passing over the global batch
- ``fetch``, ``registry``: downloading the four benchmarks (or saying how)
- ``stats``: the studies' statistics and tables (seed summaries, paired differences, Holm, the noise band)
- ``answer_key``: the teachers' executed notebooks with the reference solutions
"""
