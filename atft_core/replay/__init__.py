"""`atft replay`: the nightly retrain-and-gate policy simulated on history (issue 11, item 5).

:func:`~atft_core.replay.engine.run_replay` trains, gates and serves with the functions the DAGs
call; :mod:`~atft_core.replay.scoring` scores what each policy served; :mod:`~atft_core.replay.report`
writes the Markdown + PNG report; :mod:`~atft_core.replay.alerts` turns the replay's live RankIC
series into a ``promtool test rules`` input.
"""

from atft_core.replay.engine import POLICIES, ReplayError, ReplayResult, run_replay

__all__ = ["POLICIES", "ReplayError", "ReplayResult", "run_replay"]
