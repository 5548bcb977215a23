"""The wdfhil PCI device on the host: the ivshmem-doorbell server behind QEMU's
PCI function, guest RAM mapped from the VM's RAM file, and a DMA engine that
copies between it and the device's own memory (see docs/device-model.md and,
for the wire format shared with the guest, docs/device-abi.md)."""
