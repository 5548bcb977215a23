"""How fast the emulated framework creates and deletes memory objects.

Prints WdfMemoryCreate + WdfObjectDelete pairs per second, with the verifier
on and off, for a small (embedded or own-block) and a page-sized buffer, and
the ratio to a plain Python dict insert + delete loop measured in the same
run (the reference absorbs how fast, and how loaded, this machine is).
Each figure is the best of several rounds, timed in CPU seconds of this
process (``time.process_time``) so that other work on a shared machine
does not count against it. Target: at least 100,000 pairs/s (10 us a pair)
for the small buffer, verifier on and off (measured: about 5 us a pair on a
quiet core of this 2-core machine since the object model owns its state again;
a loaded machine shows in the dict reference). Prints only; it never fails on timing.

    python3 bench/framework_ops.py [--pairs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import time

from framework_emu import Framework, InProcessMemory, PoolType

TARGET_PAIRS_PER_SECOND = 100_000


def best_rate(run, count: int, rounds: int) -> float:
    """Operations per second of the fastest of ``rounds`` runs of ``run(count)``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        run(count)
        best = min(best, time.process_time() - start)
    return count / best


def dict_pairs(count: int) -> None:
    table: dict[int, int] = {}
    for key in range(count):
        table[key] = key
        del table[key]


def memory_pairs(fx: Framework, size: int):
    create = fx.WdfMemoryCreate
    delete = fx.WdfObjectDelete
    pool_type = PoolType.NonPagedPool

    def run(count: int) -> None:
        for _ in range(count):
            delete(create(None, pool_type, b"Bnch", size)[1])
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    reference = best_rate(dict_pairs, args.pairs * 10, args.rounds)
    print(f"reference: dict insert+delete        {reference:>12,.0f} pairs/s")
    small_rates = []
    for verifier in (True, False):
        fx = Framework(InProcessMemory(size=64 << 20), service_name="WDFBench", verifier=verifier)
        for size in (64, 4096):
            rate = best_rate(memory_pairs(fx, size), args.pairs, args.rounds)
            if size == 64:
                small_rates.append(rate)
            label = f"verifier {'on ' if verifier else 'off'}, {size:>4}-byte buffer"
            print(f"WdfMemoryCreate+WdfObjectDelete, {label}: {rate:>10,.0f} pairs/s"
                  f"  ratio to dict {rate / reference:.4f}  ({1e6 / rate:.2f} us/pair)")
        leftover = fx.pool.tag_stats(b"Bnch").bytes
        if leftover:
            print(f"  warning: {leftover} bytes still allocated after the run")
    worst = min(small_rates)
    verdict = "met" if worst >= TARGET_PAIRS_PER_SECOND else "NOT met on this run (machine load shows in the ratio)"
    print(f"target {TARGET_PAIRS_PER_SECOND:,} pairs/s (64-byte buffer, verifier on and off): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
