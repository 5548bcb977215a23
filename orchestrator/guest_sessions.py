"""Booted guests shared by consecutive scenarios: :class:`GuestSessions`.

A guest booted for one scenario serves the next ones on the same guest config
and device (DMA width, segment alignment). Between two scenarios on one guest
the hooks in ``GuestSessions.between`` run: a warm reset checked by a health
check (:mod:`orchestrator.warm_reset`), or, when the guest is not healthy, a
restore from the saved post-boot state; then the next scenario's fault plan.

New guests come from the post-boot state saved on disk
(:mod:`orchestrator.boot_cache`: keyed by image, guest config, accelerator and
QEMU) when there is one; otherwise the guest boots cold (without the device),
its state is saved for the next time, and the device is hot-plugged. So a cold
boot happens once per key on a machine. ``GuestSessions(fast=False)`` keeps
the old way (cold boots with the device at boot, no reset between scenarios)
for tests that want it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from device_model.descriptors import FULL_DMA_MASK
from device_model.faults import FaultPlan
from orchestrator.guest_config import GuestConfig, load_guest_config
from orchestrator.scenario import Scenario, plain
from orchestrator.warm_reset import WarmResetFailed, scrub_reserved_windows, warm_reset
from wdfhil.errors import ConfigError, WdfhilError

if TYPE_CHECKING:
    from guest_images import GuestImage
    from orchestrator.boot_cache import BootCache
    from orchestrator.dma_session import DmaSession
    from orchestrator.vm import VM

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class GuestEvent:
    """How a guest was made ready: ``boot`` (cold), ``restore`` (from the saved
    post-boot state), ``warm-reset``; and in how many seconds."""

    guest: str
    kind: str
    seconds: float
    detail: str = ""


def install_fault_plan(shared: SharedSession, plan: FaultPlan) -> None:
    """The next scenario's faults, counted from zero, with its own seed."""
    shared.session.device.fault_plan = plan


class GuestSessions:
    """Booted guests keyed by (guest config, device settings), reused by the next
    scenario that fits. ``image_for(recipe)`` builds or finds an image (cached);
    ``progress(text)`` hears about boots."""

    def __init__(self, *, image_for: Callable[[str | None], "GuestImage"] | None = None,
                 boot_timeout: float = 300.0, progress: Callable[[str], None] | None = None,
                 guests_dirs: tuple[str, ...] = (), fast: bool = True,
                 boot_cache: "BootCache | None" = None) -> None:
        """``fast``: new guests restore from the saved post-boot state (saved by
        the first cold boot of its key) and kept guests are warm-reset between
        scenarios; False: every new guest boots cold with its device, kept guests
        only get the next fault plan. ``boot_cache``: where post-boot states are
        (default: the user's cache folder)."""
        self._image_for = image_for or _build_image
        self._images: dict[str | None, "GuestImage"] = {}
        self.boot_timeout = boot_timeout
        self.progress = progress or (lambda text: None)
        self.guests_dirs = guests_dirs
        self.fast = fast
        self._boot_cache = boot_cache
        self.sessions: dict[tuple[str, tuple[int, int]], SharedSession] = {}
        self.events: list[GuestEvent] = []   # every boot, restore and warm reset, in order
        # Run before a reused guest takes the next scenario.
        self.between: list[BetweenHook] = (
            [self.reset_or_restore, install_fault_plan] if fast else [install_fault_plan])

    @property
    def boot_cache(self) -> "BootCache":
        if self._boot_cache is None:
            from orchestrator.boot_cache import BootCache
            self._boot_cache = BootCache()
        return self._boot_cache

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
        started = time.monotonic()
        session = self._new_session(guest, settings, plan)
        shared = SharedSession(guest, settings, session, faults_capable=plan.active)
        self.sessions[key] = shared
        return shared, time.monotonic() - started

    # -- new guests -----------------------------------------------------------------
    def _new_session(self, guest: str, settings: tuple[int, int], plan: FaultPlan
                     ) -> "DmaSession":
        """A started DmaSession: restored from the saved post-boot state if there is
        one (fast), else booted cold (and, fast, its post-boot state saved)."""
        from orchestrator.dma_session import DmaSession

        config = load_guest_config(guest, self.guests_dirs)
        image = self.image(config.image)
        dma_mask, segment_align = settings
        options = dict(dma_mask=dma_mask, segment_align=segment_align, fault_plan=plan,
                       boot_timeout=self.boot_timeout)
        if not self.fast:
            return self._boot(guest, DmaSession(config, image, **options))
        from orchestrator.kvm_probe import choose_accelerator

        accelerator = choose_accelerator(config.accelerator, kernel=image.kernel)
        session = self._restore(guest, config, image, accelerator, options)
        if session is not None:
            return session
        with self.boot_cache.boot_lock(config, image, accelerator):   # one cold boot a key
            session = self._restore(guest, config, image, accelerator, options)
            if session is not None:   # another run saved it while we waited
                return session
            return self._boot(guest, DmaSession(config, image, plug_device=True,
                                                on_guest_up=self._save_post_boot, **options))

    def _boot(self, guest: str, session: "DmaSession") -> "DmaSession":
        self.progress(f"booting {guest}")
        started = time.monotonic()
        session.start()
        seconds = time.monotonic() - started
        self._event(guest, "boot", seconds, session.vm.accelerator or "")
        self.progress(f"booted {guest} ({session.vm.accelerator}) in {seconds:.1f} s")
        return session

    def _restore(self, guest: str, config: GuestConfig, image: "GuestImage", accelerator: str,
                 options: dict) -> "DmaSession | None":
        from orchestrator.dma_session import DmaSession

        snapshot = self.boot_cache.lookup(config, image, accelerator)
        if snapshot is None:
            return None
        started = time.monotonic()
        session = DmaSession(config, image, restore_from=snapshot, **options)
        try:
            session.start()
        except WdfhilError as exc:
            # A state that passed its checks but did not come up: boot cold and save anew.
            log.warning("restoring %s from %s failed (%s); booting it cold", guest,
                        snapshot.path.parent, str(exc).splitlines()[0])
            self.boot_cache.discard(config, image, accelerator, str(exc).splitlines()[0])
            return None
        seconds = time.monotonic() - started
        self._event(guest, "restore", seconds, accelerator)
        self.progress(f"restored {guest} ({accelerator}) in {seconds:.2f} s")
        return session

    def _save_post_boot(self, vm: "VM") -> None:
        """Save a guest just booted (module loaded, no device yet) for later runs;
        a failure to save costs only speed."""
        started = time.monotonic()
        try:
            scrub_reserved_windows(vm)   # saved as a warm reset leaves them: zeros
            self.boot_cache.store(vm)
        except (WdfhilError, OSError) as exc:
            log.warning("could not save the post-boot state of %s: %s", vm.config.name, exc)
            return
        self._event(vm.config.name, "save", time.monotonic() - started)

    def _event(self, guest: str, kind: str, seconds: float, detail: str = "") -> None:
        self.events.append(GuestEvent(guest, kind, seconds, detail))

    # -- between two scenarios ---------------------------------------------------------
    def reset_or_restore(self, shared: SharedSession, plan: FaultPlan) -> None:
        """The between-scenarios hook: a warm reset with its health check; if the
        guest is not healthy, a new guest from the saved post-boot state in its place."""
        try:
            done = warm_reset(shared.session, plan)
        except WarmResetFailed as exc:
            reason = str(exc).splitlines()[0]
            if shared.pinned:
                raise
            self.progress(f"{shared.guest}: warm reset failed ({reason}); restoring it")
            try:
                shared.session.close()
            except Exception as close_error:   # the replacement matters more
                log.warning("closing the unhealthy %s failed: %s", shared.guest, close_error)
            started = time.monotonic()
            shared.session = self._new_session(shared.guest, shared.settings, plan)
            shared.faults_capable = plan.active
            self._event(shared.guest, "replace", time.monotonic() - started, reason)
            return
        self._event(shared.guest, "warm-reset", done.seconds)

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
