"""The driver under test as the loader sees it: classes from modules and from files next
to the scenario, IOCTL names resolved to their numbers, each built-in's driver stack
instantiable, a bug check as a finding (no guest needed)."""

from __future__ import annotations

import pytest

from device_model.abi import TransferMethod
from device_model.request_echo import IOCTL_ECHO
from framework_emu import BugCheck
from orchestrator.scenario import builtin_scenarios, load_scenario
from orchestrator.scenario_driver import BugCheckFinding, ScenarioDriver
from wdfhil.errors import ConfigError

DRIVER = '''
from samples.echo import EchoDriver

IOCTL_MINE = 0x222123


class MyDriver(EchoDriver):
    """A user's driver next to the scenario."""
'''


def write(folder, text, name="case.scenario.yaml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_a_driver_file_next_to_the_scenario_is_imported_once_and_its_ioctl_names_resolve(tmp_path):
    write(tmp_path, DRIVER, "my_driver.py")
    text = ("description: x\ndriver: {class: my_driver.py:MyDriver, options: {direct_io: true}}\n"
            "steps:\n  - io_ioctl: {code: IOCTL_MINE}\n"
            "  - io_ioctl: {code: 'samples.method_echo:IOCTL_ECHO_NEITHER'}\n  - io_ioctl: {code: 7}\n")
    first = load_scenario(write(tmp_path, text))
    second = load_scenario(write(tmp_path, text, "again.scenario.yaml"))
    assert [s.args["code"] for s in first.steps] == [0x222123, IOCTL_ECHO[TransferMethod.NEITHER], 7]
    (one,), (two,) = (ScenarioDriver(s, None).instances() for s in (first, second))
    assert type(one) is type(two) and type(one).__name__ == "MyDriver"   # one module per path
    assert one.direct_io is True


def test_a_name_is_looked_up_in_the_driver_modules_only(tmp_path):
    write(tmp_path, DRIVER, "my_driver.py")
    text = ("description: x\ndriver: {class: my_driver.py:MyDriver}\n"
            "steps:\n  - io_ioctl: {code: IOCTL_FILTER_STATS}\n")
    with pytest.raises(ConfigError, match="no integer IOCTL_FILTER_STATS in wdfhil_scenario_my_driver_"):
        load_scenario(write(tmp_path, text))
    filtered = text.replace("{class: my_driver.py:MyDriver}", "{class: my_driver.py:MyDriver, "
                            "filters: [{class: samples.filter:EchoFilterDriver}]}")
    from samples.filter import IOCTL_FILTER_STATS

    assert load_scenario(write(tmp_path, filtered)).steps[0].args["code"] == IOCTL_FILTER_STATS


def test_two_folders_with_a_driver_file_of_the_same_name_do_not_collide(tmp_path):
    for folder, code in (("a", 1), ("b", 2)):
        write(tmp_path / folder, DRIVER.replace("0x222123", str(code)), "my_driver.py")
        write(tmp_path / folder, "description: x\ndriver: {class: my_driver.py:MyDriver}\n"
              "steps:\n  - io_ioctl: {code: IOCTL_MINE}\n")
    codes = [load_scenario(tmp_path / f / "case.scenario.yaml").steps[0].args["code"] for f in "ab"]
    assert codes == [1, 2]


@pytest.mark.parametrize("path", [p for p in builtin_scenarios() if load_scenario(p).driver],
                         ids=lambda p: p.name)
def test_every_builtin_driver_stack_can_be_made(path):
    scenario = load_scenario(path)
    drivers = ScenarioDriver(scenario, None).instances()
    assert len(drivers) == 1 + len(scenario.driver["filters"])
    assert all(callable(getattr(d, "DriverEntry", None) or getattr(d, "EvtDriverDeviceAdd", None))
               for d in drivers)


def test_a_bug_check_is_a_finding_named_by_code_and_its_cause():
    from framework_emu.bugcheck import wdf_violation

    stopped: BugCheck = wdf_violation(5, 0x1234, 0x100A, 0, "WDF_INVALID_HANDLE: stale handle")
    finding = BugCheckFinding(stopped)
    assert (finding.rule, finding.severity, finding.code) == ("BugCheck", "error", 0x10D)
    assert finding.handle is None and finding.site is None and finding.object_kind is None
    assert finding.message.startswith("WDF_VIOLATION (0x10D) P1=0x5 P2=0x1234")
