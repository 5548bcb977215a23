"""The q35 configs boot, two VMs at once: the pool window above 4 GiB is
reserved, the Intel IOMMU is on, the hot-plug root port is there."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_highmem_and_iommu_guests_side_by_side(vm_factory):
    highmem = vm_factory("q35-3g-highmem")
    iommu = vm_factory("q35-iommu")
    assert highmem.ssh_port != iommu.ssh_port and highmem.ram_file != iommu.ram_file

    for machine in (highmem, iommu):
        base, size = machine.config.pool.window
        iomem = machine.run_checked("cat /proc/iomem")
        assert f"{base:08x}-{base + size - 1:08x} : Reserved" in iomem, iomem
        # the hot-plug root port (a PCI bridge, class 0x0604) exists on q35
        classes = machine.run_checked("cat /sys/bus/pci/devices/*/class").split()
        assert "0x060400" in classes
        assert machine.ram_file.stat().st_size == machine.config.memory

    assert highmem.config.pool.window[0] >= 1 << 32
    assert "100000000-" in highmem.run_checked("grep 'System RAM' /proc/iomem")

    assert "intel_iommu=on" in iommu.run_checked("cat /proc/cmdline")
    assert iommu.run_checked("ls /sys/class/iommu").split(), "no IOMMU in the guest"
