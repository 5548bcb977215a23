"""The runtime layer: wires a run together.

Guest configs, VMs (QEMU, QMP, serial console, SSH), attaching the device to a
VM (boot arguments, hot-plug), guest RAM layout, the DMA session that joins
the device and a guest, the agent client, the demo job and the command line.
It is the only package that imports both ``framework_emu`` and ``device_model``.
"""
