"""Scenarios: YAML files saying what to run on which guests and what must come out.

The language is defined once, in :data:`SCENARIO_SCHEMA` (nodes of
:mod:`orchestrator.scenario_schema`): :func:`load_scenario` checks a file
against it (every error names file, line and field; unknown keys are errors)
and :func:`json_schema` turns the same definition into the published JSON
Schema (``orchestrator/scenarios/scenario.schema.json``). docs/scenarios.md
describes every key.

The driver under test (``driver:``, ``module:Class`` and its options) is
imported and its options bound to the class when the file is loaded, so a
typo in either is a file:line error before any guest boots; the guest-I/O
steps (``io_read``, ``io_write``, ``io_ioctl``, ``io_stress``) need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from device_model.abi import ErrorReason, Opcode
from device_model.faults import STRUCTURE_FAULTS, FaultKind, FaultTarget
from framework_emu import NTSTATUS, PoolType
from orchestrator.guest_config import DEFAULT_GUEST
from orchestrator.scenario_driver import check_driver, resolve_code
from orchestrator.scenario_schema import (Bool, Checked, Either, Field, Int, List, Map, Number,
                                          Obj, OneKey, Place, Size, Str, Value, plain)
from wdfhil.errors import ConfigError
from wdfhil.yamlfile import load_yaml_mapping

__all__ = ["Scenario", "StepSpec", "load_scenario", "plain", "json_schema", "json_schema_text",
           "builtin_scenarios", "default_scenarios", "resolve_scenarios", "scenario_name",
           "is_scenario_file", "tag_ok", "SUFFIX", "BUILTIN_SCENARIOS_DIR", "SCHEMA_FILE"]

BUILTIN_SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"   # package data
SCHEMA_FILE = BUILTIN_SCENARIOS_DIR / "scenario.schema.json"
SCHEMA_ID = "https://wdfhil.invalid/scenario.schema.json"
SUFFIX = ".scenario.yaml"   # the collection rule: only files named *.scenario.yaml are scenarios

MAX_COUNT = 10_000

# -- the vocabulary -------------------------------------------------------------
_NAME = Str(pattern=r"^[A-Za-z0-9_.-]{1,31}$", pattern_hint="a name of 1-31 letters, digits, "
            "'_', '.', '-'", description="A name the scenario gives a buffer or object.")
_GUEST = Str(pattern=r"^[A-Za-z0-9_.-]+$", pattern_hint="a guest config name",
             description="A guest config name (wdfhil guests lists them).")
_TAG = Str(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", pattern_hint="an identifier (letters, digits, _)")
_SEED = Int(minimum=0, maximum=0xFFFFFFFF, description="Seed of the fill pattern (the agent's "
            "pattern_byte; the host's copy is agent_client.pattern_bytes).")
_REASONS = tuple(r.name for r in ErrorReason if r is not ErrorReason.NONE)
_REASON = Str(choices=_REASONS, description="Why the device refuses a descriptor "
              "(device_model.abi.ErrorReason).")
_OPCODES = tuple(o.name for o in Opcode)
# A pattern, not the list of names: the framework adds statuses, and the published
# schema should not change each time. The loader checks the name (_check_names).
_STATUS = Str(pattern=r"^STATUS_[A-Z0-9_]+$", pattern_hint="an NTSTATUS name (STATUS_...)",
              description="An NTSTATUS name (framework_emu.NTSTATUS).")
_POOL_TYPES = tuple(PoolType.__members__)
_DEVICE_OFFSET = Size(description="Offset into the device's data memory.")
_LENGTH = Size(minimum=1)


def _step(description: str, **fields: Field) -> Obj:
    return Obj(fields, description=description)


def _req(node: Any) -> Field:
    return Field(node, required=True)


def _opt(node: Any, default: Any = None) -> Field:
    return Field(node) if default is None else Field(node, default=default)


_TRANSFER = dict(
    buffer=_req(_NAME), device_offset=_opt(_DEVICE_OFFSET, 0),
    request_id=_opt(Int(minimum=0, maximum=(1 << 64) - 1, description="The descriptor's "
                        "request id (a fault rule can target it); default the agent's own.")),
    indirect=_opt(Bool(description="Force (true) or forbid (false) an indirect segment "
                       "table; default: indirect above 13 segments.")),
    count=_opt(Int(minimum=1, maximum=MAX_COUNT, description="Repeat the transfer."), 1),
    refused=_opt(Str(choices=_REASONS, description="The device must refuse it for this "
                     "reason (default: it must complete OK with every byte moved).")),
    short=_opt(Bool(description="A fault shortens it: it must complete SHORT."), False),
)

_ERRNO = Str(pattern=r"^E[A-Z0-9]+$", pattern_hint="an errno name (ENODEV, EINVAL, ...)",
             description="The call must fail with this errno (default: it must succeed).")
_IOCTL_CODE = Either(
    Int(minimum=0, maximum=0xFFFFFFFF),
    Str(pattern=r"^([A-Za-z0-9_.]+:)?[A-Za-z_][A-Za-z0-9_]*$",
        pattern_hint="a name in the driver's modules (IOCTL_ECHO_REVERSE) or module:NAME"),
    description="The IOCTL code (its low two bits are the transfer method: 0 BUFFERED, "
                "1 IN_DIRECT, 2 OUT_DIRECT, 3 NEITHER), or its name in the driver's modules.")
_IO_RW = dict(
    buffer=_req(_NAME),
    offset=_opt(Size(description="The file offset (the driver's ByteOffset)."), 0),
    start=_opt(Size(description="First byte of the buffer to use (default 0).")),
    length=_opt(Size(description="Bytes to move (default: the buffer from start on).")),
    count=_opt(Int(minimum=1, maximum=MAX_COUNT, description="Repeat the call."), 1),
    result=_opt(Size(description="The call must return this many bytes (default: length).")),
    errno=_opt(_ERRNO),
    wait=_opt(Bool(description="false: the driver may hold the request; it is issued from a "
                   "second agent process with a buffer of the same size and placement, the "
                   "step waits until the driver has it, and its outcome is noted at the end "
                   "(a request never completed ends ENODEV when the driver is unloaded)."),
              True),
)


def _io_rw_step(description: str) -> Obj:
    """io_read / io_write: result and errno exclude each other, and a call issued with
    wait: false has its outcome noted, not checked (both views refuse the mix)."""
    return Obj(_IO_RW, description=description, rules=(
        (lambda d: not ("result" in d and "errno" in d), "give result or errno, not both",
         "errno"),
        (lambda d: d["wait"] or not ("result" in d or "errno" in d), "wait: false: the call's "
         "outcome is noted at the end, not checked; drop result/errno", "wait")),
        schema_extra={"allOf": [
            {"not": {"required": ["result", "errno"]}},
            {"if": {"properties": {"wait": {"const": False}}, "required": ["wait"]},
             "then": {"not": {"anyOf": [{"required": ["result"]}, {"required": ["errno"]}]}}}]})


_SEGMENT = Obj({
    "gpa": _opt(Size(description="Guest-physical address.")),
    "after_ram_end": _opt(Size(description="Offset past the end of guest RAM (a segment the "
                               "device must refuse).")),
    "length": _req(Size()),
}, description="One raw segment: gpa or after_ram_end, and a length.",
    rules=((lambda d: ("gpa" in d) != ("after_ram_end" in d),
            "give exactly one of gpa and after_ram_end", "gpa"),),
    schema_extra={"oneOf": [{"required": ["gpa"]}, {"required": ["after_ram_end"]}]})

AGENT_STEPS: dict[str, Obj] = {
    "alloc": _step(
        "A locked user buffer in a guest process (the guest agent).",
        buffer=_req(_NAME), size=_req(Size(minimum=1, maximum=64 << 20)),
        offset=_opt(Int(minimum=0, maximum=4095, description="Offset of its first byte in its "
                        "first page (alignment; with size, page crossing)."), 0),
        where=_opt(Str(choices=("any", "low", "high"), description="Pages below (low) or "
                       "above (high) 4 GiB."), "any"),
        merge=_opt(Bool(description="Merge physically contiguous pages into one segment."), True),
        segments=_opt(Int(minimum=1, description="The buffer must get exactly this many "
                          "segments."))),
    "pool_buffer": _step(
        "A range of the guest's reserved pool window, reached by the guest through /dev/mem.",
        buffer=_req(_NAME), pool_offset=_req(Size()), size=_req(Size(minimum=1))),
    "fill": _step("Fill a guest buffer with the seeded pattern.",
                  buffer=_req(_NAME), seed=_req(_SEED)),
    "memset": _step("Set every byte of a guest buffer.",
                    buffer=_req(_NAME), byte=_req(Int(minimum=0, maximum=255))),
    "write": _step("WRITE: the device reads the buffer into its memory.", **_TRANSFER),
    "read": _step("READ: the device writes its memory into the buffer.", **_TRANSFER),
    "verify": _step(
        "The guest checks a buffer against the pattern (data integrity, in the guest).",
        buffer=_req(_NAME), seed=_req(_SEED),
        expect=_opt(Str(choices=("match", "mismatch")), "match"),
        qmp=_opt(Bool(description="Also read the buffer through QEMU (QMP xp) and compare."),
                 False)),
    "watch": _step(
        "Stale-DMA watch: wait until the buffer stops holding the pattern, or the timeout.",
        buffer=_req(_NAME), seed=_req(_SEED),
        timeout_ms=_opt(Int(minimum=1, maximum=600_000), 5000),
        expect=_opt(Str(choices=("changed", "unchanged")), "changed")),
    "device_fill": _step("Fill device memory with the pattern (through BAR2, from the guest).",
                         device_offset=_req(_DEVICE_OFFSET), length=_req(_LENGTH),
                         seed=_req(_SEED)),
    "device_verify": _step("Check device memory against the pattern, from the guest.",
                           device_offset=_req(_DEVICE_OFFSET), length=_req(_LENGTH),
                           seed=_req(_SEED),
                           expect=_opt(Str(choices=("match", "mismatch")), "match")),
    "submit": _step(
        "A hand-built descriptor with raw segments (hostile descriptors).",
        opcode=_req(Str(choices=_OPCODES)), device_offset=_opt(_DEVICE_OFFSET, 0),
        segments=_req(List(_SEGMENT, min_items=1)),
        length=_opt(Size(description="The descriptor's length (default: the segments' sum).")),
        refused=_opt(_REASON)),
    "device_info": _step("The device header as the guest sees it.",
                         status=_opt(Str(choices=("READY", "RESET", "FAILED")), "READY")),
    "guest_program": _step(
        "Your own guest program: copied into the guest and run there (static binary or "
        "busybox sh script); with a driver, it can use /dev/wdfio0 itself.",
        path=_req(Str(description="Relative to the scenario file.")),
        args=_opt(List(Str()), []),
        timeout_s=_opt(Number(minimum=0.1, maximum=3600), 120.0),
        exit_code=_opt(Int(minimum=0, maximum=255), 0),
        stdout_contains=_opt(Str()),
        stderr_contains=_opt(Str())),
    "io_write": _io_rw_step("pwrite(2) of a buffer on the driver's node (/dev/wdfio0)."),
    "io_read": _io_rw_step("pread(2) into a buffer from the driver's node (/dev/wdfio0)."),
    "io_ioctl": _step(
        "An IOCTL on the driver's node with agent buffers as input and output; the exact "
        "NTSTATUS and information the driver completed it with are checked.",
        code=_req(_IOCTL_CODE),
        major=_opt(Str(choices=("ioctl", "internal"), description="DEVICE_CONTROL or "
                       "INTERNAL_DEVICE_CONTROL."), "ioctl"),
        input=_opt(_NAME), output=_opt(_NAME),
        in_start=_opt(Size()), in_length=_opt(Size()),
        out_start=_opt(Size()), out_length=_opt(Size()),
        count=_opt(Int(minimum=1, maximum=MAX_COUNT, description="Repeat the call."), 1),
        status=_opt(_STATUS, "STATUS_SUCCESS"),
        information=_opt(Size(description="The information (bytes returned) it must "
                              "complete with (default: not checked)."))),
    "io_stress": _step(
        "Concurrency: threads in one guest process, each count rounds of its own pattern "
        "through the driver (rw: pwrite then pread at the thread's own file offset; ioctl: "
        "one echo IOCTL), verified in the guest; threads requests in flight at once.",
        threads=_req(Int(minimum=1, maximum=64)),
        count=_req(Int(minimum=1, maximum=MAX_COUNT)),
        size=_req(Size(minimum=1, maximum=16 << 20)),
        page_offset=_opt(Int(minimum=0, maximum=4095, description="Offset of each buffer's "
                             "first byte in its first page."), 0),
        mode=_opt(Str(choices=("rw", "ioctl")), "rw"),
        code=_opt(_IOCTL_CODE),   # mode ioctl: an IOCTL that echoes its input to its output
        file_offset=_opt(Size(description="mode rw: the first thread's file offset "
                              "(each thread its own range above it).")),
        timeout_s=_opt(Number(minimum=1, maximum=3600), 600.0)),
}

FRAMEWORK_STEPS: dict[str, Obj] = {
    "WdfMemoryCreate": _step(
        "Framework memory in the guest's pool window.",
        memory=_req(_NAME), size=_req(Size(minimum=1)),
        pool_type=_opt(Str(choices=_POOL_TYPES), "NonPagedPool"),
        tag=_opt(Str(pattern=r"^.{1,4}$", pattern_hint="1-4 characters")),
        status=_opt(_STATUS, "STATUS_SUCCESS")),
    "WdfMemoryCopyFromBuffer": _step(
        "Copy the pattern into framework memory.",
        memory=_req(_NAME), offset=_opt(Size(), 0), length=_opt(Size(minimum=1)),
        seed=_req(_SEED), status=_opt(_STATUS, "STATUS_SUCCESS")),
    "WdfMemoryCopyToBuffer": _step(
        "Copy out of framework memory; with a seed, it must hold the pattern.",
        memory=_req(_NAME), offset=_opt(Size(), 0), length=_opt(Size(minimum=1)),
        seed=_opt(_SEED), status=_opt(_STATUS, "STATUS_SUCCESS")),
    "guest_reads_memory": _step(
        "The guest reads framework memory through /dev/mem and checks the pattern.",
        memory=_req(_NAME), offset=_opt(Size(), 0), length=_opt(Size(minimum=1)),
        seed=_req(_SEED), expect=_opt(Str(choices=("match", "mismatch")), "match")),
    "mdl_dma": _step(
        "An MDL over framework memory (IoAllocateMdl + MmBuildMdlForNonPagedPool), its "
        "pages as the device's scatter/gather list, one transfer.",
        memory=_req(_NAME), offset=_opt(Size(), 0), length=_req(_LENGTH),
        device_offset=_opt(_DEVICE_OFFSET, 0),
        direction=_opt(Str(choices=("to_memory", "from_memory"), description="to_memory: "
                           "the device writes (READ); from_memory: it reads (WRITE)."),
                       "to_memory"),
        segments=_opt(Int(minimum=1, description="The MDL must give exactly this many "
                          "segments."))),
    "WdfObjectDelete": _step("Delete a framework object.", object=_req(_NAME)),
    "request": _step(
        "The I/O manager's part: a request presented to the driver (input is the pattern).",
        request=_req(_NAME), type=_req(Str(choices=("read", "write", "ioctl"))),
        input_size=_opt(Size(), 0), output_size=_opt(Size(), 0), seed=_opt(_SEED, 0)),
    "WdfRequestRetrieveInputMemory": _step(
        "The request's input buffer as a memory object.",
        request=_req(_NAME), memory=_req(_NAME), status=_opt(_STATUS, "STATUS_SUCCESS")),
    "WdfRequestRetrieveOutputMemory": _step(
        "The request's output buffer as a memory object.",
        request=_req(_NAME), memory=_req(_NAME), status=_opt(_STATUS, "STATUS_SUCCESS")),
    "WdfRequestComplete": _step(
        "Complete the request.", request=_req(_NAME), status=_opt(_STATUS, "STATUS_SUCCESS")),
}

STEPS = {**AGENT_STEPS, **FRAMEWORK_STEPS}

_STRUCTURE_KINDS = tuple(sorted(k.value for k in STRUCTURE_FAULTS))

_FAULT_RULE = Obj({
    "kind": _req(Str(choices=tuple(k.value for k in FaultKind))),
    "request_ids": _opt(List(Int(minimum=0, maximum=(1 << 64) - 1), min_items=1)),
    "probability": _opt(Number(minimum=0.0, maximum=1.0), 1.0),
    "opcodes": _opt(List(Str(choices=_OPCODES), min_items=1)),
    "max_count": _opt(Int(minimum=0)),
    "delay_us": _opt(Int(minimum=0, maximum=600_000_000), 1000),
    "fraction": _opt(Number(minimum=0.0, maximum=0.999999), 0.5),
    "target": _opt(Str(choices=tuple(t.value for t in FaultTarget), description="Which DMA "
                       "access it hits: data (the transfer), or the bus-master's descriptor "
                       "fetch or completion write-back (bit_flip and short_transfer only)."),
                   FaultTarget.DATA.value),
}, description="One fault rule (device_model.faults.FaultRule).",
    rules=((lambda d: d["target"] == FaultTarget.DATA.value or d["kind"] in _STRUCTURE_KINDS,
            "a descriptor or completion fault is one of " + ", ".join(_STRUCTURE_KINDS), "target"),),
    schema_extra={"if": {"properties": {"target": {"not": {"const": FaultTarget.DATA.value}}},
                         "required": ["target"]},
                  "then": {"properties": {"kind": {"enum": list(_STRUCTURE_KINDS)}}}})

_DEVICE = Obj({
    "personality": _opt(Str(choices=("echo", "busmaster"), description="echo: the guest's "
                            "PCI function moves descriptors the guest builds; busmaster: the "
                            "driver gets the bus-master device as its hardware (it programs "
                            "the DMA itself; needs driver:). dma_bits, segment_align and "
                            "faults apply to the personality's device."), "echo"),
    "dma_bits": _opt(Int(minimum=32, maximum=64, description="DMA address width: the device "
                         "refuses segments ending above 2**dma_bits."), 64),
    "remapping": _opt(Bool(description="busmaster: DMA remapping (an IOMMU): the framework's "
                           "adapters hand out IOVAs, the device translates them."), False),
    "segment_align": _opt(Int(choices=tuple(1 << n for n in range(21)), description="Required "
                              "alignment of every segment (a power of two up to 1 MiB)."), 1),
    "faults": _opt(Obj({
        "seed": _opt(Int(minimum=0), 0),
        "rules": _opt(List(_FAULT_RULE), []),
    }, description="Seeded fault injection.")),
}, description="The device the guest gets at boot.",
    rules=((lambda d: not d["remapping"] or d["personality"] == "busmaster",
            "remapping is for the busmaster personality", "remapping"),
           (lambda d: d["personality"] == "busmaster" or all(
               rule["target"] == FaultTarget.DATA.value for rule in (d.get("faults") or {}).get("rules", [])),
            "descriptor and completion faults are for the busmaster personality (the echo "
            "device fetches nothing by DMA)", "faults"),),
    schema_extra={"if": {"properties": {"remapping": {"const": True}}, "required": ["remapping"]},
                  "then": {"properties": {"personality": {"const": "busmaster"}},
                           "required": ["personality"]}})

_DRIVER_CLASS = Str(pattern=r"^[A-Za-z0-9_./-]+:[A-Za-z_][A-Za-z0-9_]*$",
                    pattern_hint="module:Class (samples.echo:EchoDriver) or FILE.py:Class",
                    description="The driver class: module:Class, or FILE.py:Class with FILE "
                                "relative to the scenario file.")
_DRIVER_OPTIONS = Map(key=Str(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                              pattern_hint="a keyword argument name"), value=Value(),
                      description="Keyword arguments of the class.")
_FILTER = Obj({"class": _req(_DRIVER_CLASS), "options": _opt(_DRIVER_OPTIONS, {})},
              description="A filter driver above the function driver.")
_DRIVER = Obj({
    "class": _req(_DRIVER_CLASS),
    "options": _opt(_DRIVER_OPTIONS, {}),
    "filters": _opt(List(_FILTER, description="Filters above it, lowest first."), []),
    "verifier": _opt(Str(choices=("record", "bugcheck"), description="record: a fatal "
                         "finding is recorded and the driver goes on; bugcheck: it stops the "
                         "emulated machine (later requests end ENODEV)."), "record"),
}, description="The driver under test: it serves the guest's /dev/wdfio0 (the guest-I/O "
   "steps) in the emulated framework, over the guest's own memory.")

_FINDING = Obj({
    "rule": _req(Str(description="The verifier rule (BufAfterReqCompletedWriteA, ...); "
                     "BugCheck for a bug check that stopped the driver's machine.")),
    "object": _opt(_NAME),
    "object_kind": _opt(Str(pattern=r"^WDF[A-Z]+$", pattern_hint="a handle kind (WDFMEMORY, "
                            "WDFREQUEST, ...)", description="The object's kind (a driver's "
                            "objects have no scenario name).")),
    "at": _opt(Str(description="Part of the finding's call site (file:line) or of its "
                   "message (a leak names where it was allocated), e.g. my_driver.py:42.")),
    "code": _opt(Int(minimum=0, maximum=0xFFFFFFFF, description="BugCheck: the bug check "
                     "code (0x10D, 0x50, ...).")),
    "severity": _opt(Str(choices=("error", "warning"))),
}, description="One finding: its rule and, optionally, the object (by the name the "
   "scenario gave it, or its kind), where, and severity.")

_EXPECT = Obj({
    "findings": _opt(List(_FINDING), []),
    "ignore_warnings": _opt(Bool(description="Warnings not listed in findings do not fail "
                                 "the scenario."), False),
    "refusals": _opt(Map(key=Str(choices=_REASONS), value=Int(minimum=0)), {}),
    "faults": _opt(Map(key=Str(choices=tuple(k.value for k in FaultKind)),
                       value=Int(minimum=0)), {}),
    "timing": _opt(Map(key=Str(choices=("scenario_s", "step_s")), value=Number(minimum=0)), {}),
}, description="What must come out: the exact verifier findings, refusals by reason, "
   "injected faults by kind. Timing bounds are printed, never asserted.")

SCENARIO_SCHEMA = Obj({
    "description": _req(Str(description="What the scenario shows, one line.")),
    "guests": _opt(List(_GUEST, min_items=1, description="Guest configs it runs on."),
                   [DEFAULT_GUEST]),
    "tags": _opt(List(_TAG, description="Words for selection (pytest -k, wdfhil run --tag).")),
    "device": _opt(_DEVICE),
    "driver": _opt(_DRIVER),
    "steps": _req(List(OneKey(STEPS), min_items=1)),
    "expect": _opt(_EXPECT),
}, description="A wdfhil scenario (docs/scenarios.md).")


def json_schema() -> dict[str, Any]:
    """The published JSON Schema, made from :data:`SCENARIO_SCHEMA`."""
    schema = SCENARIO_SCHEMA.json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "wdfhil scenario", **schema}


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


# -- the checked scenario ----------------------------------------------------------
@dataclass(frozen=True)
class StepSpec:
    kind: str
    args: Checked
    index: int

    @property
    def line(self) -> int:
        return self.args.source.line

    @property
    def framework(self) -> bool:
        return self.kind in FRAMEWORK_STEPS


@dataclass(frozen=True)
class Scenario:
    """A checked scenario file."""

    name: str
    path: Path
    description: str
    guests: tuple[str, ...]
    tags: tuple[str, ...]
    device: Checked
    driver: Checked | None          # None: no driver under test (raw DMA and framework steps)
    steps: tuple[StepSpec, ...]
    expect: Checked
    data: Checked = field(repr=False)

    @property
    def uses_framework(self) -> bool:
        return any(step.framework for step in self.steps)

    @property
    def busmaster(self) -> bool:
        return self.device["personality"] == "busmaster"


def scenario_name(path: Path) -> str:
    name = path.name
    for suffix in (SUFFIX, ".yaml", ".yml"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def load_scenario(path: str | Path) -> Scenario:
    """Read and check one scenario file; ConfigError with file, line and field otherwise."""
    path = Path(path)
    data = load_yaml_mapping(path)
    checked = SCENARIO_SCHEMA.check(data, Place(None, ""))
    device = checked.get("device") or _DEVICE.check({}, Place(data, "device"))
    expect = checked.get("expect") or _EXPECT.check({}, Place(data, "expect"))
    steps = tuple(StepSpec(kind, args, index)
                  for index, (kind, args) in enumerate(checked["steps"]))
    scenario = Scenario(name=scenario_name(path), path=path, description=checked["description"],
                        guests=tuple(checked["guests"]), tags=tuple(checked.get("tags", ())),
                        device=device, driver=checked.get("driver"), steps=steps,
                        expect=expect, data=checked)
    _check_names(scenario)
    _check_driver(scenario)
    return scenario


IO_STEPS = ("io_read", "io_write", "io_ioctl", "io_stress")


def _check_driver(scenario: Scenario) -> None:
    """The driver's classes import and take their options; the steps that need a driver
    have one; IOCTL names resolve (to the number the step then uses)."""
    driver = scenario.driver
    if driver is None:
        if scenario.busmaster:
            raise scenario.device.error("personality", "the busmaster personality is the "
                                        "hardware of a driver: add driver:", "busmaster")
        for step in scenario.steps:
            if step.kind in IO_STEPS:
                raise step.args.source.error(None, f"{step.kind} needs the driver under test "
                                             f"(driver: module:Class)")
        return
    framework = next((step for step in scenario.steps if step.framework), None)
    if framework is not None:
        raise framework.args.source.error(None, f"{framework.kind}: direct framework steps and "
                                          f"a driver would share the guest's pool window; use "
                                          f"one or the other in a scenario")
    modules = check_driver(driver, scenario.path.parent)
    for step in scenario.steps:
        if step.kind in ("io_ioctl", "io_stress") and isinstance(step.args.get("code"), str):
            step.args["code"] = resolve_code(step.args, "code", modules)
        if step.kind == "io_stress" and step.args["mode"] == "ioctl" and "code" not in step.args:
            raise step.args.error(None, "mode ioctl needs code (an IOCTL that echoes its input)")


def _check_names(scenario: Scenario) -> None:
    """Every buffer, memory, object and request is made before a step uses it."""
    buffers: set[str] = set()
    allocated: set[str] = set()
    objects: dict[str, str] = {}      # name -> "memory" | "request"
    makes = {"alloc": ("buffer", buffers), "pool_buffer": ("buffer", buffers)}
    for step in scenario.steps:
        args = step.args
        checks_status = step.framework or step.kind == "io_ioctl"
        if checks_status and "status" in args and args["status"] not in NTSTATUS.__members__:
            raise args.error("status", f"{args['status']} is not an NTSTATUS the framework "
                             f"knows", args["status"])
        if step.kind in makes:
            buffers.add(args["buffer"])
            if step.kind == "alloc":
                allocated.add(args["buffer"])
            continue
        for key in ("buffer", "input", "output"):
            if key in args and args[key] not in buffers:
                raise args.error(key, f"no buffer named {args[key]!r} was made before "
                                 f"(by alloc or pool_buffer)", args[key])
        if not args.get("wait", True) and args["buffer"] not in allocated:
            raise args.error("wait", f"wait: false needs a buffer made by alloc (a second "
                             f"process makes its own like it), not {args['buffer']!r}", False)
        if step.kind == "WdfMemoryCreate":
            objects[args["memory"]] = "memory"
        elif step.kind == "request":
            objects[args["request"]] = "request"
        elif step.kind.startswith("WdfRequestRetrieve"):
            _need(args, "request", objects, "request")
            objects[args["memory"]] = "memory"
        elif step.kind == "WdfObjectDelete":
            if args["object"] not in objects:
                raise args.error("object", f"no framework object named {args['object']!r} was "
                                 f"made before", args["object"])
        elif "memory" in args:
            _need(args, "memory", objects, "memory")
        elif "request" in args:
            _need(args, "request", objects, "request")
    for index, finding in enumerate(scenario.expect.get("findings", [])):
        name = finding.get("object")
        if name is not None and name not in objects and name not in buffers:
            raise finding.error("object", f"no object named {name!r} in the steps", name)
    if scenario.path.suffix:
        for step in scenario.steps:
            if step.kind == "guest_program":
                program = scenario.path.parent / step.args["path"]
                if not program.is_file():
                    raise step.args.error("path", f"no such file: {program}", step.args["path"])


def _need(args: Checked, key: str, objects: dict[str, str], kind: str) -> None:
    name = args[key]
    if objects.get(name) != kind:
        raise args.error(key, f"no {kind} named {name!r} was made before", name)


# -- finding scenario files ----------------------------------------------------------
def is_scenario_file(path: Path) -> bool:
    """The collection rule (pytest plugin, wdfhil scenarios): the name ends in .scenario.yaml."""
    return path.name.endswith(SUFFIX)


def builtin_scenarios() -> list[Path]:
    return sorted(p for p in BUILTIN_SCENARIOS_DIR.rglob(f"*{SUFFIX}"))


def default_scenarios() -> list[Path]:
    """The default set (``make demo``, ``wdfhil run`` without arguments): the built-in
    scenarios tagged ``default``."""
    chosen = []
    for path in builtin_scenarios():
        try:
            if "default" in load_scenario(path).tags:
                chosen.append(path)
        except ConfigError:
            chosen.append(path)     # a broken built-in must show, not vanish
    return chosen


def resolve_scenarios(items: Iterable[str | Path]) -> list[Path]:
    """Scenario files from paths, folders (every *.scenario.yaml below) and built-in names."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob(f"*{SUFFIX}"))
            if not found:
                raise ConfigError(f"no *{SUFFIX} file in folder {path}", value=str(item))
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif "/" not in str(item) and (BUILTIN_SCENARIOS_DIR / f"{item}{SUFFIX}").is_file():
            paths.append(BUILTIN_SCENARIOS_DIR / f"{item}{SUFFIX}")
        else:
            known = ", ".join(scenario_name(p) for p in builtin_scenarios())
            raise ConfigError(f"no scenario file or built-in scenario named {str(item)!r} "
                              f"(built-in: {known})", value=str(item))
    return paths


def tag_ok(scenario: Scenario, tags: Iterable[str]) -> bool:
    tags = list(tags)
    return not tags or any(tag in scenario.tags for tag in tags)

