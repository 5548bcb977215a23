"""Guests kept fast between scenarios: warm reset and restore against a cold boot,
and the default matrix's wall time.

Every figure is printed beside the reference measured in the same run on the
same machine (a loaded CI host moves both):

- cold boot (QEMU, kernel, SSH login) to the first agent command, and with the
  device ready (hot-plug-free: the device at boot, as ``GuestSessions(fast=False)``
  boots): the references;
- restore from the saved post-boot state (``orchestrator.boot_cache``; saved
  here first if the machine has none) to the first agent command (no device),
  and to the device ready (hot-plugged, the guest's ``/dev/wdfhil0`` answering the
  agent's ``info``) as ``GuestSessions`` does it. Targets 0.25 s and 0.4 s. The
  device part is printed too: the hot-plug (to the guest driver's marker in BAR2)
  and the agent's ``info`` after it;
- warm reset of a kept guest (device, pool window, guest cleanup, health
  check) as the between-scenarios hook runs it; target 50 ms. Also with the
  agent's view of the device in the health check (``agent_info=True``);
- the default matrix (``wdfhil matrix ci/matrix.yaml -j 2``: every guest config x
  every scenario) in a child process: wall time (target under 5 minutes on 2
  cores), scenarios per minute, and the same per cold boot.

Run: ``python3 bench/matrix.py`` (``--check`` exits 1 when a target is missed;
``--no-matrix`` skips the matrix; ``--restores``, ``--resets``, ``--cold`` set the
repetitions).
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from guest_images import DEFAULT_RECIPE, build_image
from orchestrator.agent_client import AgentClient
from orchestrator.boot_cache import BootCache
from orchestrator.guest_config import DEFAULT_GUEST, load_guest_config
from orchestrator.guest_sessions import GuestSessions
from orchestrator.kvm_probe import choose_accelerator
from orchestrator.vm import RESTORED_RUNNING, VM
from orchestrator.warm_reset import warm_reset

WARM_RESET_TARGET_S = 0.050
RESTORE_AGENT_TARGET_S = 0.25
RESTORE_DEVICE_TARGET_S = 0.4
MATRIX_TARGET_S = 300.0
REPO = Path(__file__).resolve().parent.parent


def median(values: list[float]) -> float:
    return statistics.median(values)


def cold_boots(config, image, count: int) -> tuple[list[float], list[float]]:
    """Seconds of cold boots to the first agent command, and to the device ready."""
    to_agent, to_device = [], []
    for _ in range(count):
        began = time.perf_counter()
        with VM(config, image) as vm:
            AgentClient(vm).version()
            to_agent.append(time.perf_counter() - began)
    for _ in range(count):
        with GuestSessions(image_for=lambda recipe: image, fast=False) as guests:
            began = time.perf_counter()
            shared, _seconds = guests.acquire_device(config.name)
            shared.session.agent.info()
            to_device.append(time.perf_counter() - began)
    return to_agent, to_device


def restores(config, image, cache: BootCache, count: int
             ) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    """Seconds of restores to a running guest (RAM copied, state loaded), to the first
    agent command (no device), and to the device ready as GuestSessions makes a new guest;
    and of that last one's device part: the hot-plug (QMP, the guest's hot-plug handling
    and probe, to the driver's "bound" in BAR2), and the agent's ``info`` after it."""
    accelerator = choose_accelerator(config.accelerator, kernel=image.kernel)
    with GuestSessions(image_for=lambda recipe: image, boot_cache=cache) as guests:
        guests.acquire_device(config.name)        # saves the post-boot state if missing
    snapshot = cache.lookup(config, image, accelerator)
    assert snapshot is not None, "the post-boot state was not saved"
    to_running, to_agent, to_device, plugs, infos = [], [], [], [], []
    for _ in range(count):
        began = time.perf_counter()

        def step(text: str, began: float = began) -> None:
            if text.endswith(RESTORED_RUNNING):
                to_running.append(time.perf_counter() - began)

        with VM(config, image, restore_from=snapshot, progress=step) as vm:
            AgentClient(vm).version()
            to_agent.append(time.perf_counter() - began)
    with GuestSessions(image_for=lambda recipe: image, boot_cache=cache) as guests:
        for _ in range(count):
            began = time.perf_counter()
            shared, _seconds = guests.acquire_device(config.name)
            asked = time.perf_counter()
            shared.session.agent.info()
            to_device.append(time.perf_counter() - began)
            infos.append(time.perf_counter() - asked)
            plugs.append(shared.session.plug_seconds)
            assert guests.events[-1].kind == "restore", guests.events[-1]
            guests.release((shared.guest, shared.settings))
    return to_running, to_agent, to_device, plugs, infos


def warm_resets(config, image, cache: BootCache, count: int) -> tuple[list[float], list[float]]:
    """Seconds of warm resets (as the hook runs them), and with the agent's check."""
    plain, with_agent = [], []
    with GuestSessions(image_for=lambda recipe: image, boot_cache=cache) as guests:
        shared, _seconds = guests.acquire_device(config.name)
        session = shared.session
        for _ in range(count):
            session.agent.info()                     # a scenario's worth of use
            plain.append(warm_reset(session).seconds)
        for _ in range(count):
            with_agent.append(warm_reset(session, agent_info=True).seconds)
    return plain, with_agent


def run_matrix(jobs: int) -> tuple[float, int, str]:
    """Wall seconds of ``wdfhil matrix ci/matrix.yaml -j N``, its cell count, its output tail."""
    command = [sys.executable, "-m", "orchestrator.cli", "matrix", "ci/matrix.yaml"]
    listing = subprocess.run([*command, "--list"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    cells = len([line for line in listing.splitlines() if line.strip()])
    began = time.perf_counter()
    done = subprocess.run([*command, "-j", str(jobs)], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
    if done.returncode not in (0, 1):
        raise SystemExit(f"the matrix did not run (exit {done.returncode}):\n{tail}")
    return seconds, cells, tail


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_GUEST)
    parser.add_argument("--cold", type=int, default=2)
    parser.add_argument("--restores", type=int, default=5)
    parser.add_argument("--resets", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-matrix", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    image = build_image(DEFAULT_RECIPE)
    config = load_guest_config(args.config)
    cache = BootCache()
    cold_agent, cold_device = cold_boots(config, image, args.cold)
    restore_running, restore_agent, restore_device, plugs, infos = restores(
        config, image, cache, args.restores)
    resets, resets_agent = warm_resets(config, image, cache, args.resets)
    cold = median(cold_device)
    rows = [   # (what, seconds, target, how, compared with the cold boot)
        ("cold boot to first agent command", median(cold_agent), None,
         f"median of {args.cold}", False),
        ("cold boot to device ready", cold, None, f"median of {args.cold}; the reference",
         False),
        ("restore to a running guest", median(restore_running), None,
         f"median of {args.restores}; RAM copy while QEMU starts, state load", True),
        ("restore to first agent command", median(restore_agent), RESTORE_AGENT_TARGET_S,
         f"median of {args.restores}", True),
        ("restore to device ready", median(restore_device), RESTORE_DEVICE_TARGET_S,
         f"median of {args.restores}", True),
        ("  of which the device hot-plug", median(plugs), None,
         f"median of {args.restores}; QMP, guest hot-plug and probe, to the driver's "
         "BAR2 marker", False),
        ("  and then the agent's info", median(infos), None,
         f"median of {args.restores}", False),
        ("warm reset", median(resets), WARM_RESET_TARGET_S, f"median of {args.resets}", True),
        ("warm reset + agent info", median(resets_agent), None, f"median of {args.resets}",
         True),
    ]
    print(f"guest {config.name}, image {image.name} {image.digest[:12]}, "
          f"accelerator {choose_accelerator(config.accelerator, kernel=image.kernel)}")
    missed = False
    for name, seconds, target, how, compared in rows:
        ratio = f", {cold / seconds:.1f}x faster than a cold boot" if compared else ""
        goal = ""
        if target is not None:
            goal = f"; target {target * 1000:.0f} ms: {verdict(seconds, target)}"
            missed |= seconds > target
        print(f"{name + ':':34} {seconds * 1000:8.1f} ms ({how}{ratio}{goal})")
    if not args.no_matrix:
        seconds, cells, tail = run_matrix(args.jobs)
        per_minute = cells / seconds * 60
        print(f"{'default matrix (-j ' + str(args.jobs) + '):':34} {seconds:8.1f} s  "
              f"({cells} scenarios, {per_minute:.1f} scenarios/minute, {seconds / cold:.1f} "
              f"cold boots' time; target {MATRIX_TARGET_S:.0f} s: "
              f"{verdict(seconds, MATRIX_TARGET_S)})")
        summary = [line for line in tail.splitlines() if re.search(r"passed|failed", line)]
        print("  " + (summary[-1] if summary else tail.replace("\n", "\n  ")))
        missed |= seconds > MATRIX_TARGET_S
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
