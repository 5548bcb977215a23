"""Sample drivers written against framework_emu, runnable on in-process memory or a guest.

- :mod:`samples.echo`: a correct echo driver (buffered or direct I/O).
- :mod:`samples.method_echo`: the echo driver plus one echo IOCTL per transfer method
  (``IOCTL_ECHO_BUFFERED``, ``_IN_DIRECT``, ``_OUT_DIRECT``, ``_NEITHER``).
- :mod:`samples.filter`: an upper filter over the echo driver, with synchronous and
  asynchronous I/O-target sends.
- :mod:`samples.internal_ioctl`: the "Using Memory Buffers" case: an internal IOCTL's
  structure wrapped with WdfMemoryCreatePreallocated and passed down.
- :mod:`samples.guest`: ``InProcessGuest``, the guest side (buffers, syscalls) on
  in-process memory, for tests and demos.
- :mod:`samples.dma_echo`: a bus-master DMA driver (enabler, common-buffer descriptor table,
  transactions, interrupt with ISR and DPC, BAR registers through MmMapIoSpaceEx).
- :mod:`samples.fake_busmaster`: the in-process bus-master device it drives (registers, a DMA
  engine through ``DeviceHardware.translate``, an interrupt line).
- :mod:`samples.dma_rig`: both wired up on a guest with RAM above 4 GiB (``dma_echo()``,
  ``bare_device()``).

docs/writing-a-driver.md shows how to run them.
"""
