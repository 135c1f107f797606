"""The machinery that runs, ships and measures what the notebooks teach; a student never has to look here.

- ``cli``, ``commands``: the command line; ``settings``: how a run's settings are declared and checked
- ``runtime``: CPU threads, seeds and the device; ``distributed``: multi-GPU training over the global batch
- ``atomic``, ``checkpoints``, ``run_store``: files written atomically, checkpoints, the notebooks' store of runs
- ``fetch``, ``registry``: downloading the four benchmarks (or saying how)
- ``stats``: the studies' statistics and tables; ``answer_key``: the teachers' executed notebooks
"""
