"""``freeze-check``: prove that the intended freeze of a model really holds.

Layout (one job per module): ``spec`` (patterns, pyproject.toml, baselines; no torch), ``runner``
(the torch side: probe run and optimizer steps), ``facts`` (plain dataclasses), ``rules`` (pure
judges), ``check`` (``freeze_check`` / ``assert_frozen``, re-exported by ``gradprobe.api``).
Importing this package does not import torch.
"""
