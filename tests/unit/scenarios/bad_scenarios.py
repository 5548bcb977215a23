"""Bad scenario files and what the validator must say about each: (name, text,
line, field, words in the message, whether JSON Schema can see it too).

Shared by the validator tests and the test holding the JSON Schema to the
same answers. ``schema`` False marks checks beyond a JSON Schema (names used
before they are made, a program file that must exist).
"""

GOOD = """\
description: a good one
guests: [pc-256m]
tags: [baseline]
device:
  dma_bits: 32
  segment_align: 8
  faults:
    seed: 3
    rules:
      - {kind: bit_flip, probability: 0.5, opcodes: [READ], max_count: 2}
steps:
  - alloc: {buffer: a, size: 4K, offset: 100, where: low}
  - fill: {buffer: a, seed: 1}
  - write: {buffer: a, device_offset: 0x1000, count: 3}
  - submit: {opcode: WRITE, segments: [{after_ram_end: 0, length: 512}], refused: SEGMENT_NOT_IN_RAM}
  - WdfMemoryCreate: {memory: m, size: 8192, tag: Scn1}
  - mdl_dma: {memory: m, length: 100}
  - WdfObjectDelete: {object: m}
expect:
  findings:
    - {rule: ParentObjectCheck, object: m, severity: warning}
  refusals: {SEGMENT_NOT_IN_RAM: 1}
  faults: {bit_flip: 1}
  timing: {scenario_s: 10}
"""

# (id, text, line, field, message words, also refused by the JSON Schema)
BAD = [
    ("unknown-top-key", "description: x\nsteps:\n  - device_info: {}\nguset: [pc-256m]\n",
     4, "guset", "unknown field", True),
    ("driver-not-a-mapping", "description: x\ndriver: mydrv:Echo\nsteps:\n  - device_info: {}\n",
     2, "driver", "expected a mapping", True),
    ("driver-class-shape",
     "description: x\ndriver:\n  class: samples.echo.EchoDriver\nsteps:\n  - device_info: {}\n",
     3, "driver.class", "module:Class", True),
    ("driver-unknown-key",
     "description: x\ndriver:\n  class: samples.echo:EchoDriver\n  option: {}\nsteps:\n"
     "  - device_info: {}\n", 4, "driver.option", "unknown field", True),
    ("driver-option-name",
     "description: x\ndriver:\n  class: samples.echo:EchoDriver\n  options: {direct-io: 1}\n"
     "steps:\n  - device_info: {}\n", 4, "driver.options.direct-io", "keyword argument", True),
    ("driver-bad-verifier",
     "description: x\ndriver:\n  class: samples.echo:EchoDriver\n  verifier: loud\nsteps:\n"
     "  - device_info: {}\n", 4, "driver.verifier", "not one of", True),
    ("remapping-on-echo",
     "description: x\ndevice:\n  remapping: true\nsteps:\n  - device_info: {}\n",
     3, "device.remapping", "busmaster personality", True),
    ("io-bad-errno",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n  - alloc: {buffer: a, size: 1}\n"
     "  - io_read: {buffer: a, errno: enodev}\n", 5, "steps[1].io_read.errno", "errno name", True),
    ("io-result-and-errno",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n  - alloc: {buffer: a, size: 1}\n"
     "  - io_read:\n      buffer: a\n      result: 1\n      errno: EIO\n", 8, "steps[1].io_read.errno",
     "not both", True),
    ("io-no-wait-with-errno",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n  - alloc: {buffer: a, size: 1}\n"
     "  - io_read: {buffer: a, wait: false, errno: ENODEV}\n", 5, "steps[1].io_read.wait",
     "noted at the end", True),
    ("io-stress-threads",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - io_stress: {threads: 65, count: 1, size: 10}\n", 4, "steps[0].io_stress.threads",
     "at most 64", True),
    ("io-ioctl-code-type",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - io_ioctl: {code: 1.5}\n", 4, "steps[0].io_ioctl.code", "integer or a name", True),
    ("io-ioctl-unknown-field",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - io_ioctl: {code: 4, method: BUFFERED}\n", 4, "steps[0].io_ioctl.method", "unknown field",
     True),
    ("finding-code-negative",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  findings:\n    - {rule: BugCheck, code: -1}\n",
     6, "expect.findings[0].code", "at least 0", True),
    ("finding-object-kind-shape",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  findings:\n"
     "    - {rule: X, object_kind: memory}\n", 6, "expect.findings[0].object_kind", "handle kind", True),
    ("missing-description", "steps:\n  - device_info: {}\n", 1, "description", "required field", True),
    ("missing-steps", "description: x\n", 1, "steps", "required field", True),
    ("empty-steps", "description: x\nsteps: []\n", 2, "steps", "at least 1", True),
    ("unknown-step", "description: x\nsteps:\n  - device_info: {}\n  - wrte: {buffer: a}\n",
     4, "steps[1].wrte", "unknown step", True),
    ("two-keys-in-a-step",
     "description: x\nsteps:\n  - fill: {buffer: a, seed: 1}\n    memset: {buffer: a, byte: 0}\n",
     3, "steps[0]", "exactly one key", True),
    ("unknown-step-field",
     "description: x\nsteps:\n  - alloc:\n      buffer: a\n      size: 10\n      ofset: 3\n",
     6, "steps[0].alloc.ofset", "unknown field", True),
    ("missing-step-field", "description: x\nsteps:\n  - alloc:\n      buffer: a\n",
     4, "steps[0].alloc.size", "required field", True),
    ("offset-too-big",
     "description: x\nsteps:\n  - alloc: {buffer: a, size: 10,\n      offset: 4096}\n",
     4, "steps[0].alloc.offset", "at most 4095", True),
    ("bad-size", "description: x\nsteps:\n  - alloc: {buffer: a, size: 4Q}\n",
     3, "steps[0].alloc.size", "not a size", True),
    ("bool-is-not-int", "description: x\nsteps:\n  - fill: {buffer: a, seed: yes}\n",
     3, "steps[0].fill.seed", "expected an integer", True),
    ("bad-where", "description: x\nsteps:\n  - alloc: {buffer: a, size: 1, where: middle}\n",
     3, "steps[0].alloc.where", "not one of", True),
    ("bad-buffer-name", "description: x\nsteps:\n  - alloc: {buffer: 'a b', size: 1}\n",
     3, "steps[0].alloc.buffer", "a name", True),
    ("bad-refusal-reason",
     "description: x\nsteps:\n  - alloc: {buffer: a, size: 1}\n"
     "  - write: {buffer: a, refused: SEGMENT_NOT_IN_ROM}\n",
     4, "steps[1].write.refused", "not one of", True),
    ("segment-gpa-and-after-end",
     "description: x\nsteps:\n  - submit:\n      opcode: READ\n      segments:\n"
     "        - {gpa: 4096, after_ram_end: 0, length: 1}\n",
     6, "steps[0].submit.segments[0].gpa", "exactly one of", True),
    ("dma-bits-too-small", "description: x\ndevice:\n  dma_bits: 16\nsteps:\n  - device_info: {}\n",
     3, "device.dma_bits", "at least 32", True),
    ("segment-align-not-power-of-two",
     "description: x\ndevice:\n  segment_align: 12\nsteps:\n  - device_info: {}\n",
     3, "device.segment_align", "not one of", True),
    ("fault-target-unknown",
     "description: x\ndevice:\n  personality: busmaster\n  faults:\n    rules:\n"
     "      - {kind: bit_flip, target: doorbell}\ndriver: {class: samples.dma_busmaster:DmaBusMasterDriver}\n"
     "steps:\n  - device_info: {}\n", 6, "device.faults.rules[0].target", "not one of", True),
    ("fault-target-kind",
     "description: x\ndevice:\n  personality: busmaster\n  faults:\n    rules:\n"
     "      - {kind: drop_interrupt, target: descriptor}\ndriver: {class: samples.dma_busmaster:DmaBusMasterDriver}\n"
     "steps:\n  - device_info: {}\n", 6, "device.faults.rules[0].target", "bit_flip, short_transfer", True),
    ("fault-target-on-echo",
     "description: x\ndevice:\n  faults:\n    rules:\n      - {kind: bit_flip, target: completion}\n"
     "steps:\n  - device_info: {}\n", 3, "device.faults", "busmaster personality", False),
    ("bad-fault-kind",
     "description: x\ndevice:\n  faults:\n    rules:\n      - {kind: explode}\nsteps:\n"
     "  - device_info: {}\n", 5, "device.faults.rules[0].kind", "not one of", True),
    ("probability-above-one",
     "description: x\ndevice:\n  faults:\n    rules:\n      - kind: bit_flip\n"
     "        probability: 1.5\nsteps:\n  - device_info: {}\n",
     6, "device.faults.rules[0].probability", "at most 1", True),
    ("bad-guest-list", "description: x\nguests: pc-256m\nsteps:\n  - device_info: {}\n",
     2, "guests", "expected a list", True),
    ("unknown-expect-key",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  finding: []\n",
     5, "expect.finding", "unknown field", True),
    ("finding-without-rule",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  findings:\n    - {object: m}\n",
     6, "expect.findings[0].rule", "required field", True),
    ("refusal-count-negative",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  refusals: {DEVICE_RANGE: -1}\n",
     5, "expect.refusals.DEVICE_RANGE", "at least 0", True),
    ("refusal-unknown-reason",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  refusals: {TOO_HOT: 1}\n",
     5, "expect.refusals.TOO_HOT", "not one of", True),
    ("timing-unknown-bound",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  timing: {boot_s: 1}\n",
     5, "expect.timing.boot_s", "not one of", True),
    ("bad-status-shape",
     "description: x\nsteps:\n  - WdfMemoryCreate: {memory: m, size: 1, status: Success}\n",
     3, "steps[0].WdfMemoryCreate.status", "an NTSTATUS name", True),
    # beyond a JSON Schema: names and files
    ("buffer-used-before-made",
     "description: x\nsteps:\n  - fill: {buffer: a, seed: 1}\n",
     3, "steps[0].fill.buffer", "no buffer named", False),
    ("memory-used-before-made",
     "description: x\nsteps:\n  - WdfMemoryCopyFromBuffer: {memory: m, seed: 1}\n",
     3, "steps[0].WdfMemoryCopyFromBuffer.memory", "no memory named", False),
    ("delete-unknown-object",
     "description: x\nsteps:\n  - WdfObjectDelete: {object: m}\n",
     3, "steps[0].WdfObjectDelete.object", "no framework object", False),
    ("finding-on-unknown-object",
     "description: x\nsteps:\n  - device_info: {}\nexpect:\n  findings:\n"
     "    - {rule: X, object: ghost}\n",
     6, "expect.findings[0].object", "no object named", False),
    ("unknown-status-name",
     "description: x\nsteps:\n  - WdfMemoryCreate: {memory: m, size: 1, status: STATUS_FINE}\n",
     3, "steps[0].WdfMemoryCreate.status", "not an NTSTATUS the framework knows", False),
    ("program-missing",
     "description: x\nsteps:\n  - guest_program: {path: no-such-program.sh}\n",
     3, "steps[0].guest_program.path", "no such file", False),
    # beyond a JSON Schema: the driver's module, class and options, what needs a driver
    ("driver-no-such-module",
     "description: x\nsteps:\n  - device_info: {}\ndriver:\n  class: no_such_module_x:Drv\n",
     5, "driver.class", "cannot import no_such_module_x", False),
    ("driver-no-such-file",
     "description: x\nsteps:\n  - device_info: {}\ndriver:\n  class: mine.py:Drv\n",
     5, "driver.class", "no such file", False),
    ("driver-no-such-class",
     "description: x\nsteps:\n  - device_info: {}\ndriver:\n  class: samples.echo:EchoDrvier\n",
     5, "driver.class", "has no class EchoDrvier", False),
    ("driver-not-a-driver",
     "description: x\nsteps:\n  - device_info: {}\ndriver:\n  class: pathlib:Path\n",
     5, "driver.class", "not a driver class", False),
    ("driver-bad-option",
     "description: x\nsteps:\n  - device_info: {}\ndriver:\n  class: samples.echo:EchoDriver\n"
     "  options: {direct: true}\n", 6, "driver.options", "does not take these options", False),
    ("filter-bad-class",
     "description: x\nsteps:\n  - device_info: {}\ndriver:\n  class: samples.echo:EchoDriver\n"
     "  filters:\n    - class: samples.filter:NoFilter\n", 7, "driver.filters[0].class",
     "has no class NoFilter", False),
    ("io-without-driver",
     "description: x\nsteps:\n  - alloc: {buffer: a, size: 1}\n  - io_read: {buffer: a}\n",
     4, "steps[1].io_read", "needs the driver under test", False),
    ("busmaster-without-driver",
     "description: x\ndevice:\n  personality: busmaster\nsteps:\n  - device_info: {}\n",
     3, "device.personality", "add driver:", False),
    ("io-buffer-not-made",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n  - io_write: {buffer: a}\n",
     4, "steps[0].io_write.buffer", "no buffer named", False),
    ("io-ioctl-output-not-made",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - io_ioctl: {code: 4, output: o}\n", 4, "steps[0].io_ioctl.output", "no buffer named", False),
    ("io-ioctl-unknown-name",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - io_ioctl: {code: IOCTL_ECHO_FORWARD}\n", 4, "steps[0].io_ioctl.code",
     "no integer IOCTL_ECHO_FORWARD in samples.echo", False),
    ("io-ioctl-bad-status",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - io_ioctl: {code: 4, status: STATUS_FINE}\n", 4, "steps[0].io_ioctl.status",
     "not an NTSTATUS", False),
    ("io-stress-ioctl-without-code",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - io_stress: {threads: 2, count: 1, size: 10, mode: ioctl}\n", 4, "steps[0].io_stress",
     "needs code", False),
    ("driver-and-framework-steps",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - WdfMemoryCreate: {memory: m, size: 8}\n", 4, "steps[0].WdfMemoryCreate",
     "share the guest's pool window", False),
    ("wait-false-on-pool-buffer",
     "description: x\ndriver: {class: samples.echo:EchoDriver}\nsteps:\n"
     "  - pool_buffer: {buffer: p, pool_offset: 0, size: 8}\n  - io_read: {buffer: p, wait: false}\n",
     5, "steps[1].io_read.wait", "needs a buffer made by alloc", False),
]
