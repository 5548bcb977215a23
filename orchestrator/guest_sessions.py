"""Booted guests shared by consecutive scenarios: :class:`GuestSessions`.

A guest booted for one scenario serves the next ones on the same guest config
and device (DMA width, segment alignment). Between two scenarios on one guest
the hooks in ``GuestSessions.between`` run (today: the next scenario's fault
plan goes into the device); a warm reset or a snapshot restore slots in there
without touching the runner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from device_model.descriptors import FULL_DMA_MASK
from device_model.faults import FaultPlan
from orchestrator.guest_config import load_guest_config
from orchestrator.scenario import Scenario, plain
from wdfhil.errors import ConfigError

if TYPE_CHECKING:
    from guest_images import GuestImage
    from orchestrator.dma_session import DmaSession


def device_settings(scenario: Scenario) -> tuple[int, int]:
    """(dma_mask, segment_align) of the guest's device a scenario asks for (with the
    busmaster personality those are the bus-master device's: the guest's stays plain)."""
    if scenario.busmaster:
        return FULL_DMA_MASK, 1
    bits = scenario.device["dma_bits"]
    return (FULL_DMA_MASK if bits == 64 else (1 << bits) - 1), scenario.device["segment_align"]


def fault_plan(scenario: Scenario) -> FaultPlan:
    faults = scenario.device.get("faults") or {}
    return FaultPlan.from_config([plain(rule) for rule in faults.get("rules", [])],
                                 seed=faults.get("seed", 0))


@dataclass
class SharedSession:
    """A booted guest with the device, and what it was booted for."""

    guest: str
    settings: tuple[int, int]
    session: "DmaSession"
    faults_capable: bool      # booted with an active fault plan (see GuestSessions.acquire)
    scenarios_run: int = 0
    pinned: int = 0           # fixtures holding it: never closed under them


BetweenHook = Callable[[SharedSession, FaultPlan], None]


def install_fault_plan(shared: SharedSession, plan: FaultPlan) -> None:
    """The next scenario's faults, counted from zero, with its own seed."""
    shared.session.device.fault_plan = plan


class GuestSessions:
    """Booted guests keyed by (guest config, device settings), reused by the next
    scenario that fits. ``image_for(recipe)`` builds or finds an image (cached);
    ``progress(text)`` hears about boots."""

    def __init__(self, *, image_for: Callable[[str | None], "GuestImage"] | None = None,
                 boot_timeout: float = 300.0, progress: Callable[[str], None] | None = None,
                 guests_dirs: tuple[str, ...] = ()) -> None:
        self._image_for = image_for or _build_image
        self._images: dict[str | None, "GuestImage"] = {}
        self.boot_timeout = boot_timeout
        self.progress = progress or (lambda text: None)
        self.guests_dirs = guests_dirs
        self.sessions: dict[tuple[str, tuple[int, int]], SharedSession] = {}
        # Run before a reused guest takes the next scenario (warm reset / restore go here).
        self.between: list[BetweenHook] = [install_fault_plan]

    def image(self, recipe: str | None) -> "GuestImage":
        if recipe not in self._images:
            self._images[recipe] = self._image_for(recipe)
        return self._images[recipe]

    def acquire(self, scenario: Scenario, guest: str) -> tuple[SharedSession, float | None]:
        """A session for ``scenario`` on ``guest``; see :meth:`acquire_device`."""
        plan = FaultPlan() if scenario.busmaster else fault_plan(scenario)   # busmaster: its own
        return self.acquire_device(guest, device_settings(scenario), plan)

    def acquire_device(self, guest: str, settings: tuple[int, int] = (FULL_DMA_MASK, 1),
                       plan: FaultPlan | None = None) -> tuple[SharedSession, float | None]:
        """A booted ``guest`` whose device has ``settings`` (dma_mask, segment_align)
        and ``plan``: a fitting booted one (after the between-scenario hooks) or a
        new boot. Also returns the boot's seconds (None when reused). A device
        booted without faults cannot take a fault plan later (its DMA validator
        took the fast path without views), so then the guest boots again."""
        plan = plan or FaultPlan()
        key = (guest, settings)
        shared = self.sessions.get(key)
        if shared is not None and plan.active and not shared.faults_capable:
            if shared.pinned:
                raise ConfigError(f"{guest} is held (by a fixture) with a device booted "
                                  f"without faults; a fault plan cannot be added to it")
            self.release(key)
            shared = None
        if shared is not None:
            for hook in self.between:
                hook(shared, plan)
            return shared, None
        from orchestrator.dma_session import DmaSession

        config = load_guest_config(guest, self.guests_dirs)
        image = self.image(config.image)
        dma_mask, segment_align = settings
        self.progress(f"booting {guest}")
        started = time.monotonic()
        session = DmaSession(config, image, dma_mask=dma_mask, segment_align=segment_align,
                             fault_plan=plan, boot_timeout=self.boot_timeout)
        session.start()
        seconds = time.monotonic() - started
        self.progress(f"booted {guest} ({session.vm.accelerator}) in {seconds:.1f} s")
        shared = SharedSession(guest, settings, session, faults_capable=plan.active)
        self.sessions[key] = shared
        return shared, seconds

    def release(self, key: tuple[str, tuple[int, int]]) -> None:
        shared = self.sessions.pop(key, None)
        if shared is not None:
            shared.session.close()

    def release_except(self, guest: str | None) -> None:
        """Close every unpinned guest but those of config ``guest`` (bounds memory)."""
        for key, shared in list(self.sessions.items()):
            if key[0] != guest and not shared.pinned:
                self.release(key)

    def close(self) -> None:
        errors = []
        for key in list(self.sessions):
            try:
                self.release(key)
            except Exception as exc:   # close the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> "GuestSessions":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _build_image(recipe: str | None) -> "GuestImage":
    from guest_images import DEFAULT_RECIPE, build_image
    return build_image(recipe or DEFAULT_RECIPE)
