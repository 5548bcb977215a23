"""The wdfhil pytest plugin (entry point ``pytest11``: active wherever wdfhil is installed).

Scenario files are pytest items, so JUnit XML (``--junitxml``), selection
(``-k``, ``-m guest_pc_256m``) and parallel workers (pytest-xdist,
``-n N --dist loadgroup``) come from pytest.

- Collection rule: only files named ``*.scenario.yaml`` (any folder pytest
  looks in). Any other YAML file is left alone, and the check is one string
  comparison per file, so collecting unit tests costs nothing more; the
  scenario machinery is imported only when such a file is found.
- One item per (scenario, guest config): ``NAME[GUEST]``, marked ``e2e``,
  ``scenario`` and ``guest_<config>`` (``pc-256m`` -> ``guest_pc_256m``); the
  scenario's tags are keywords for ``-k``. ``--wdfhil-guest CFG`` runs every
  scenario on CFG instead of its own guests.
- A guest booted for one item serves the next ones on the same config and
  device; items are grouped by guest (in their slots) so that happens, and a
  guest is closed when the next item does not need it.

Fixtures for your own tests (docs/scenarios.md has an example):
``wdfhil_guest`` (factory: ``wdfhil_guest("q35-1g")`` -> a booted
:class:`~orchestrator.dma_session.DmaSession`, kept for the module),
``wdfhil_session`` (the guest named by ``@pytest.mark.wdfhil_guest(NAME)``,
default ``pc-256m``), ``wdfhil_device``, ``wdfhil_agent``, ``wdfhil_framework``
(a Framework on that guest's pool window, unloaded after the test) and
``wdfhil_run_scenario`` (``wdfhil_run_scenario(path, guest=None)`` ->
ScenarioResult).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from orchestrator.scenario import Scenario
    from orchestrator.guest_sessions import GuestSessions
    from orchestrator.scenario_result import ScenarioResult

SUFFIX = ".scenario.yaml"         # orchestrator.scenario.SUFFIX, kept here to import nothing
DEFAULT_GUEST = "pc-256m"
_sessions_key = pytest.StashKey["GuestSessions"]()
_results_key = pytest.StashKey[list["ScenarioResult"]]()   # what this process ran, in full
_report_key = pytest.StashKey[Path]()                       # where --wdfhil-report wrote it


def guest_marker(guest: str) -> str:
    return "guest_" + re.sub(r"[^A-Za-z0-9_]", "_", guest)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wdfhil", "wdfhil scenarios")
    group.addoption("--wdfhil-guest", action="append", default=[], metavar="CFG",
                    help="run scenarios on this guest config instead of their own (repeatable)")
    group.addoption("--wdfhil-guests-dir", action="append", default=[], metavar="DIR",
                    help="a folder of your own guest configs")
    group.addoption("--wdfhil-boot-timeout", type=float, default=300.0, metavar="S")
    group.addoption("--wdfhil-bundles", metavar="DIR",
                    help="write a reproduction bundle of each failing scenario here "
                         "(wdfhil replay reruns it; docs/reports.md)")
    group.addoption("--wdfhil-report", metavar="DIR",
                    help="write the scenario items' report folder here (results.json, "
                         "junit.xml, report.html, bundles of failures; docs/reports.md); "
                         "under pytest-xdist each worker writes DIR/<worker id>: join them "
                         "with wdfhil report merge")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: boots a real QEMU guest (slow, needs qemu-system-x86)")
    config.addinivalue_line("markers", "scenario: a wdfhil scenario file's item")
    config.addinivalue_line("markers", "wdfhil_guest(name): the guest config the wdfhil "
                                       "fixtures of this test use")
    for guest in _guest_names(config):
        config.addinivalue_line("markers", f"{guest_marker(guest)}: runs on guest config {guest}")
    config.pluginmanager.register(VerdictTable(config), "wdfhil-verdict-table")


class VerdictTable:
    """The verdict table at the end of the run, made from the items' reports (their
    JUnit properties), so it also works when pytest-xdist workers ran the items."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if report.when == "call" and "verdict" in props:
            self.rows.append(props)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows:
            return
        from orchestrator.scenario_result import ScenarioResult, format_table

        results = []
        for row in self.rows:
            results.append(ScenarioResult(row["scenario"], "", row["guest"], row["verdict"],
                                          seconds=float(row["seconds"]),
                                          brief=row.get("summary", "")))
        terminalreporter.write_line(format_table(results))
        if _report_key in self.config.stash:
            from orchestrator.report_command import describe_report
            terminalreporter.write_line(describe_report(self.config.stash[_report_key]))


def _guest_names(config: pytest.Config) -> list[str]:
    try:
        from orchestrator.guest_config import list_guest_configs
        return list_guest_configs(config.getoption("wdfhil_guests_dir"))
    except Exception:      # a bad WDFHIL_GUESTS_PATH must not break every pytest run
        return []


def _sessions(config: pytest.Config) -> "GuestSessions":
    if _sessions_key not in config.stash:
        from orchestrator.guest_sessions import GuestSessions

        config.stash[_sessions_key] = GuestSessions(
            boot_timeout=config.getoption("wdfhil_boot_timeout"),
            guests_dirs=tuple(config.getoption("wdfhil_guests_dir")))
    return config.stash[_sessions_key]


def pytest_collect_file(file_path, parent):
    if file_path.name.endswith(SUFFIX):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self):
        from orchestrator.scenario import load_scenario
        from wdfhil.errors import ConfigError

        try:
            scenario = load_scenario(self.path)
        except ConfigError as exc:
            raise self.CollectError(f"invalid scenario: {exc}") from None
        guests = self.config.getoption("wdfhil_guest") or list(scenario.guests)
        for guest in guests:
            item = ScenarioItem.from_parent(self, name=f"{scenario.name}[{guest}]",
                                            scenario=scenario, guest=guest)
            item.add_marker("e2e")
            item.add_marker("scenario")
            item.add_marker(guest_marker(guest))
            if self.config.pluginmanager.hasplugin("xdist"):
                item.add_marker(pytest.mark.xdist_group(guest))
            item.extra_keyword_matches.update(scenario.tags)
            yield item


class ScenarioFailed(Exception):
    def __init__(self, result: "ScenarioResult") -> None:
        super().__init__(result.summary())
        self.result = result


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: "Scenario", guest: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.guest = guest
        self.result: "ScenarioResult | None" = None

    def runtest(self) -> None:
        from orchestrator.scenario_runner import run_scenario

        result = run_scenario(self.scenario, self.guest, _sessions(self.config))
        self.result = result
        self.config.stash.setdefault(_results_key, []).append(result)
        self.user_properties += [("scenario", self.scenario.name), ("guest", self.guest),
                                 ("verdict", result.verdict), ("seconds", f"{result.seconds:.3f}")]
        self.user_properties.append(("summary", result.summary()))
        self.user_properties += [("finding", text) for text in result.findings]
        for note in result.notes:
            if note.startswith("timing:"):
                self.user_properties.append(("timing", note))
        if not result.passed:
            folder = self.config.getoption("wdfhil_bundles")
            if folder and result.evidence is not None and result.evidence.files:
                from orchestrator.bundle import write_bundle
                self.user_properties.append(("bundle", str(write_bundle(result, folder))))
            raise ScenarioFailed(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ScenarioFailed):
            return excinfo.value.result.explain()
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, 0, f"scenario {self.name}"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Group scenario items by guest and device, in the slots they already hold, so
    consecutive items share a booted guest (faults first, as plan_runs does)."""
    slots = [i for i, item in enumerate(items) if isinstance(item, ScenarioItem)]
    if len(slots) < 2:
        return
    from orchestrator.guest_sessions import device_settings, fault_plan

    scenario_items = [items[i] for i in slots]
    first_seen: dict[str, int] = {}
    for index, item in enumerate(scenario_items):
        first_seen.setdefault(item.guest, index)
    order = sorted(scenario_items, key=lambda it: (first_seen[it.guest],
                                                    device_settings(it.scenario),
                                                    not fault_plan(it.scenario).active))
    for slot, item in zip(slots, order):
        items[slot] = item


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Close guests the next item does not need (before session fixtures go)."""
    if _sessions_key not in item.config.stash:
        return
    sessions = item.config.stash[_sessions_key]
    keep = nextitem.guest if isinstance(nextitem, ScenarioItem) else None
    sessions.release_except(keep)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The report folder (``--wdfhil-report``), then the guests go. The terminal summary,
    which names the folder, comes after every sessionfinish hook."""
    try:
        _write_report(session.config)
    finally:
        if _sessions_key in session.config.stash:
            session.config.stash[_sessions_key].close()


def _write_report(config: pytest.Config) -> None:
    """The run's report folder, from the full results this process ran (with their
    evidence); under pytest-xdist one folder per worker."""
    folder = config.getoption("wdfhil_report", None)
    results = config.stash.get(_results_key, [])
    if not folder or not results:
        return
    from orchestrator.report_command import write_run_report

    worker = getattr(config, "workerinput", {}).get("workerid")   # pytest-xdist
    folder = Path(folder).resolve()
    config.stash[_report_key] = write_run_report(results, folder / worker if worker else folder)


# -- fixtures for your own tests -------------------------------------------------------
@pytest.fixture(scope="module")
def wdfhil_guest(request: pytest.FixtureRequest):
    """``wdfhil_guest(name="pc-256m", dma_bits=64)`` -> a booted DmaSession with the
    device, shared with scenario items on the same guest, kept until the module ends."""
    from device_model.descriptors import FULL_DMA_MASK

    sessions = _sessions(request.config)
    held = []

    def get(name: str = DEFAULT_GUEST, *, dma_bits: int = 64):
        mask = FULL_DMA_MASK if dma_bits == 64 else (1 << dma_bits) - 1
        shared, _boot = sessions.acquire_device(name, (mask, 1))
        if shared not in held:
            shared.pinned += 1
            held.append(shared)
        return shared.session

    yield get
    for shared in held:
        shared.pinned -= 1
    sessions.release_except(None)


def _marked_guest(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("wdfhil_guest")
    return marker.args[0] if marker and marker.args else DEFAULT_GUEST


@pytest.fixture
def wdfhil_session(request: pytest.FixtureRequest, wdfhil_guest):
    """The booted guest of ``@pytest.mark.wdfhil_guest(NAME)`` (default pc-256m)."""
    return wdfhil_guest(_marked_guest(request))


@pytest.fixture
def wdfhil_device(wdfhil_session):
    """The guest's EchoDevice (fault plan, DMA trace, its data memory)."""
    return wdfhil_session.device


@pytest.fixture
def wdfhil_agent(wdfhil_session):
    """The guest agent client (AgentClient) on /dev/wdfhil0."""
    return wdfhil_session.agent


@pytest.fixture
def wdfhil_framework(wdfhil_session):
    """A Framework (verifier recording) on the guest's pool window, unloaded after the test."""
    from framework_emu import Framework

    fx = Framework(wdfhil_session.ram, service_name="WDFTest", verifier_mode="record",
                   pool_window=wdfhil_session.vm.config.pool.window)
    yield fx
    fx.unload_driver()


@pytest.fixture
def wdfhil_run_scenario(request: pytest.FixtureRequest, wdfhil_guest):
    """``wdfhil_run_scenario(path, guest=None)`` -> ScenarioResult (guest: the
    scenario's first one by default)."""
    from orchestrator.scenario import load_scenario
    from orchestrator.scenario_runner import run_scenario

    sessions = _sessions(request.config)

    def run(path, guest: str | None = None):
        scenario = load_scenario(path)
        return run_scenario(scenario, guest or scenario.guests[0], sessions)

    return run
