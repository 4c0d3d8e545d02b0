"""tune_gc freezes start-up objects and makes collections rarer, without
turning the collector off (cycles must still be reclaimed)."""

import gc

from presence_node.node import tune_gc


def test_tune_gc_freezes_and_raises_thresholds_but_keeps_collecting():
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > before[0]
        assert gc.isenabled()

        class Cycle:
            pass

        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2  # the cycle is still found and freed
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
