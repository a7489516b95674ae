"""Entry points, each a thin door: ``python -m runners.sweep`` (the main job), ``train``, ``bench``,
``report`` and ``memory_check``.

The machinery behind them is grouped by job:

- :mod:`runners.sweeping`: plan a sweep's points, measure each, record it, finish with a report;
- :mod:`runners.measure`: timing, peak memory, the skeleton and core probes, peers, the worker protocol
  and the one classification of failures;
- :mod:`runners.training`: the LightningModule, the Trainer and training throughput;
- :mod:`runners.results`: the results store and the context that makes a result reproducible;
- :mod:`runners.reporting`: the report's tables, plots and markdown;
- :mod:`runners.hydra_glue`: generated config options, launcher facts, the after-multirun callback.
"""
