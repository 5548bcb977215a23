"""The QEMU command line: what each config turns into, argument by argument."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.guest_config import load_guest_config
from orchestrator.qemu_command import (HOTPLUG_ROOT_PORT, build_qemu_argv, kernel_command_line,
                                       parse_hostfwd_port)


def argv_for(config_name, image, **overrides):
    options = dict(accelerator="tcg", ram_file=Path("/dev/shm/run/ram"), console_fd=7, qmp_fd=8,
                   name="t")
    options.update(overrides)
    return build_qemu_argv(load_guest_config(config_name), image, **options)


def value_after(argv, flag):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_pc_guest_has_shared_file_ram_console_qmp_and_forwarded_ssh(fake_image):
    image = fake_image("")
    argv = argv_for("pc-256m", image)
    assert value_after(argv, "-machine") == ["pc,memory-backend=ram0"]
    assert value_after(argv, "-m") == ["256M"]
    assert value_after(argv, "-object") == [
        "memory-backend-file,id=ram0,size=268435456,mem-path=/dev/shm/run/ram,share=on"]
    assert value_after(argv, "-append") == ["console=ttyS0 memmap=64M$0x4000000 memmap=1M$0x8000000"]
    assert "socket,id=wdfhil-console,fd=7" in value_after(argv, "-chardev")
    assert "socket,id=wdfhil-qmp,fd=8" in value_after(argv, "-chardev")
    assert value_after(argv, "-mon") == ["chardev=wdfhil-qmp,mode=control"]
    # the guest reaches nothing but what is forwarded to it (SSH, on a loopback port)
    assert value_after(argv, "-netdev") == ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:0-:22"]
    assert value_after(argv, "-accel") == ["tcg"]
    assert value_after(argv, "-cpu") == ["qemu64,+rdrand"]  # seeds the guest's RNG at boot
    assert not any("virtio-rng" in arg for arg in argv)
    assert "-nodefaults" in argv and "-incoming" not in argv
    assert not any(HOTPLUG_ROOT_PORT in arg for arg in argv)  # pc has no PCIe


def test_q35_always_gets_the_hotplug_root_port(fake_image):
    argv = argv_for("q35-1g", fake_image(""))
    assert (f"pcie-root-port,id={HOTPLUG_ROOT_PORT},chassis=1,pref64-reserve=32M"
            in value_after(argv, "-device"))
    assert value_after(argv, "-smp") == ["2"]


def test_intel_iommu_comes_first_with_split_irqchip_and_kernel_flag(fake_image):
    argv = argv_for("q35-iommu", fake_image(""))
    devices = value_after(argv, "-device")
    assert devices[0] == "intel-iommu,intremap=on"
    assert value_after(argv, "-machine") == ["q35,memory-backend=ram0,kernel-irqchip=split"]
    assert "intel_iommu=on" in value_after(argv, "-append")[0].split()


def test_kvm_uses_the_host_cpu_and_incoming_waits_for_a_state(fake_image):
    argv = argv_for("pc-256m", fake_image(""), accelerator="kvm", incoming=True,
                    extra_args=["-device", "ivshmem-doorbell,chardev=ivsh"])
    assert value_after(argv, "-cpu") == ["host"] and value_after(argv, "-accel") == ["kvm"]
    assert argv[-2:] == ["-incoming", "defer"]
    assert argv[-4:-2] == ["-device", "ivshmem-doorbell,chardev=ivsh"]


def test_unknown_accelerator_is_refused(fake_image):
    with pytest.raises(ValueError):
        argv_for("pc-256m", fake_image(""), accelerator="auto")


def test_kernel_command_line_is_image_then_config(fake_image):
    image = fake_image("")
    config = load_guest_config("q35-3g-highmem").with_changes(kernel_args=("quiet",))
    assert kernel_command_line(config, image) == "console=ttyS0 memmap=256M$0x110000000 memmap=1M$0x4000000 quiet"


USERNET = (
    "Hub -1 (n0):\r\n"
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[HOST_FORWARD]  14       127.0.0.1 41781       10.0.2.15    22     0     0\r\n"
    "  TCP[ESTABLISHED]   25       127.0.0.1 52000       10.0.2.15    22     0     0\r\n")


def test_forwarded_port_is_read_from_info_usernet():
    assert parse_hostfwd_port(USERNET) == 41781
    with pytest.raises(ValueError):
        parse_hostfwd_port(USERNET, guest_port=80)
    with pytest.raises(ValueError):
        parse_hostfwd_port("Hub -1 (n0):\r\n")


def test_an_image_with_a_command_relay_gets_its_serial_port(fake_image):
    plain = fake_image("")
    assert not plain.command_relay
    assert not any("isa-serial" in arg for arg in argv_for("pc-256m", plain, relay_fd=9))
    relayed = dataclasses.replace(plain, details={"command_relay": "/dev/ttyS1"})
    for config in ("pc-256m", "q35-1g"):
        argv = argv_for(config, relayed, relay_fd=9)
        assert "socket,id=wdfhil-relay,fd=9" in value_after(argv, "-chardev")
        assert "isa-serial,chardev=wdfhil-relay,index=1" in value_after(argv, "-device")
    with pytest.raises(ValueError, match="relay_fd"):
        argv_for("pc-256m", relayed)
