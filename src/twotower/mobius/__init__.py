"""MOBIUS data loop: cross-join augmentation, relevance teachers, bad-case sampling, the task,
business related weights (BRW) and the training entry point (``train_mobius_run``)."""
