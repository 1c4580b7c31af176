"""A download's ``.part`` file, written around the page cache while it can be.

A verified download already keeps both cores busy with its hashes; putting 512 MiB into the
page cache on the way costs about as much as one of them more (each 4 KiB page allocated and
filled: 0.2 CPU-second on tmpfs, 0.6 on this machine's ext4). With ``O_DIRECT`` the disk takes
the bytes straight from the network buffer: 0.03 CPU-second, the rest is the device's time,
spent while the hashes run. The image is read again only when a VM is deployed from it.

Direct writes need whole blocks at block offsets from aligned memory (the download's buffers
are page-aligned and filled whole, but for the last): the first write that is not, and any
write the filesystem refuses, turns ``O_DIRECT`` off for the rest of the file. A filesystem
that cannot open files for direct I/O gets the page cache from the start.

:class:`BackgroundWriter` makes those writes in a thread of their own, so the download reads
on while the device works.

    writer = BackgroundWriter(PartFile(part, append=resuming))
    writer.write(view)      # the buffer is the writer's until writer.wait(writer.mark)
    writer.drain()
    writer.out.sync()
    writer.close()
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from marketplace.inflate import Buffer, InOrder

BLOCK = 4096  # the largest logical block size direct I/O may ask alignment to


class PartFile:
    def __init__(self, path: Path, *, append: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        size = path.stat().st_size if append and path.exists() else 0
        self.direct = size % BLOCK == 0
        fd = -1
        if self.direct:
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o666)
            except OSError as exc:  # EINVAL: no direct I/O on this filesystem
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False
        self.fd = fd if fd >= 0 else os.open(path, flags, 0o666)

    def write(self, buffer: Buffer) -> None:
        data = memoryview(buffer)
        if self.direct and len(data) % BLOCK:
            self._through_page_cache()
        while data:
            try:
                written = os.write(self.fd, data)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self._through_page_cache()
                continue
            data = data[written:]
            if data and self.direct:  # a short direct write leaves the offset unaligned
                self._through_page_cache()

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _through_page_cache(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def __enter__(self) -> PartFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BackgroundWriter(InOrder):
    """Writes the buffers given to :meth:`write` to a :class:`PartFile`, in order, in a thread of
    its own (an :class:`~marketplace.inflate.InOrder`): a direct write waits for the device,
    and the network and the hashes go on meanwhile. A failed write is raised by the next
    :meth:`write`, :meth:`wait` or :meth:`drain`."""

    def __init__(self, out: PartFile) -> None:
        super().__init__(out.write, name="part-writer")
        self.out = out

    def write(self, data: memoryview) -> None:
        self.put(data)

    def drain(self) -> None:
        """Until everything given is in the file."""
        self.wait(self.mark)

    def close(self) -> None:
        """Write what is queued, stop the thread, close the file (a failure is not raised)."""
        super().close()
        self.out.close()
