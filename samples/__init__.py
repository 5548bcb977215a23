"""Sample drivers written against framework_emu, runnable on in-process memory or a guest.

- :mod:`samples.echo`: a correct echo driver (buffered or direct I/O).
- :mod:`samples.filter`: an upper filter over the echo driver, with synchronous and
  asynchronous I/O-target sends.
- :mod:`samples.internal_ioctl`: the "Using Memory Buffers" case: an internal IOCTL's
  structure wrapped with WdfMemoryCreatePreallocated and passed down.
- :mod:`samples.guest`: ``InProcessGuest``, the guest side (buffers, syscalls) on
  in-process memory, for tests and demos.

docs/writing-a-driver.md shows how to run them.
"""
