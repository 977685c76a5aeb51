"""Freeze rules: pure judges over the facts of one run → violations, warnings and the report.

No torch here.  ``judge`` runs every rule; ``FreezeReport`` is what ``freeze_check`` returns.
The intended freeze itself (glob patterns) is ``gradprobe.judges.freeze_spec``.
"""

from __future__ import annotations

from gradprobe.judges.freeze.report import FreezeReport
from gradprobe.judges.freeze.rules import Judgement, judge

__all__ = ["FreezeReport", "Judgement", "judge"]
