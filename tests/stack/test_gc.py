"""The collector settings of every part (stack.process.tune_gc): young collections rarer, start-up frozen."""

from __future__ import annotations

import gc

from stack.process import GC_YOUNG, tune_gc


def test_tune_gc_makes_young_collections_rarer_and_freezes_start_up() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
