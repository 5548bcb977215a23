"""Findings name the driver's own file:line; the demo runs and shows its steps."""

from framework_emu import PoolType, demo
from framework_emu.callsite import driver_site


def helper_in_the_driver(fx):
    return fx.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 16)


def test_site_is_the_innermost_driver_frame(fx):
    here = driver_site()
    assert here[0] == __file__
    _, mem, _ = helper_in_the_driver(fx)
    created = fx._live[mem].created_at
    assert created[0] == __file__ and created[1] == helper_in_the_driver.__code__.co_firstlineno + 1


def test_demo_runs_and_shows_each_step(capsys):
    assert demo.main() == 0
    out = capsys.readouterr().out
    for text in ("default pool tag b'Echo'", "crosses into the next page", "stays in one page",
                 "already holds b'card=4111-1111'", "PFNs [", "MemAfterReqCompletedIoctlA at ", "demo.py:",
                 "BufAfterReqCompletedIoctlA", "request completed at", "WDF_VIOLATION (0x10D) P1=0x5",
                 "stale handle", "Tag      Type", "unloaded leaving 1 pool allocation"):
        assert text in out, text
