"""Byte transports for the host link: a pyserial URL (a board's UART, or the sim device's TCP
socket) behind two methods, :meth:`write` and :meth:`read`.

``serial:///dev/ttyUSB1`` (or a bare device path) opens a serial port at ``baudrate``;
``socket://127.0.0.1:PORT`` connects to the Verilator sim device (``neurofabric.sim.device``);
any other URL pyserial's ``serial_for_url`` understands (``loop://``, ``rfc2217://``) works too.
"""

from abc import ABC, abstractmethod

import serial

__all__ = ["Transport", "SerialTransport", "TransportError", "FaultInjector", "open_transport"]


class TransportError(OSError):
    """The byte transport could not be opened or failed."""


class Transport(ABC):
    """What :class:`neurofabric.host.link.LinkBackend` needs from a byte transport (abstract:
    :class:`SerialTransport`, :class:`FaultInjector`, ``neurofabric.sim.device.PysimTransport``)."""

    @abstractmethod
    def write(self, data):
        """Send all of `data`."""

    @abstractmethod
    def read(self, timeout):
        """Return the bytes available now, waiting up to `timeout` seconds for the first one;
        ``b""`` if none arrived."""

    @abstractmethod
    def close(self):
        """Release the transport."""


class SerialTransport(Transport):
    """A pyserial URL. `write_timeout` bounds a blocked write (seconds)."""

    def __init__(self, url, *, baudrate=3_000_000, write_timeout=5.0):
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty string such as 'serial:///dev/ttyUSB1' or "
                             f"'socket://127.0.0.1:PORT', not {url!r}")
        self.url = url
        path = url[len("serial://"):] if url.startswith("serial://") else url
        try:
            self._port = serial.serial_for_url(path, baudrate=baudrate, timeout=0,
                                               write_timeout=write_timeout)
        except (serial.SerialException, ValueError) as error:
            raise TransportError(f"cannot open {url!r}: {error}") from error

    def write(self, data):
        try:
            self._port.write(data)
            self._port.flush()
        except serial.SerialException as error:
            raise TransportError(f"write to {self.url!r} failed: {error}") from error

    def read(self, timeout):
        try:
            self._port.timeout = max(0.0, timeout)
            first = self._port.read(1)
            if not first:
                return b""
            self._port.timeout = 0
            waiting = self._port.in_waiting
            return first + (self._port.read(waiting) if waiting else b"")
        except serial.SerialException as error:
            raise TransportError(f"read from {self.url!r} failed: {error}") from error

    def close(self):
        self._port.close()


def open_transport(url, **kwargs):
    """A :class:`SerialTransport` for `url` (keyword arguments go to its constructor)."""
    return SerialTransport(url, **kwargs)


class FaultInjector(Transport):
    """Wraps a transport and damages the bytes crossing it, for testing the link's recovery.

    Each byte written or read is, independently, dropped with probability `drop`, has one
    random bit flipped with probability `flip`, or is followed by a random extra byte with
    probability `insert`. ``counts`` records what was done. `rng` is a ``random.Random``.
    """

    def __init__(self, inner, rng, *, flip=0.0, drop=0.0, insert=0.0, directions=("write", "read")):
        for name, value in (("flip", flip), ("drop", drop), ("insert", insert)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value!r} is out of range: allowed [0, 1]")
        self.inner, self.rng = inner, rng
        self.flip, self.drop, self.insert = flip, drop, insert
        self.directions = frozenset(directions)
        self.counts = {"flip": 0, "drop": 0, "insert": 0}

    def damage(self, data):
        out = bytearray()
        for byte in data:
            roll = self.rng.random()
            if roll < self.drop:
                self.counts["drop"] += 1
                continue
            if roll < self.drop + self.flip:
                self.counts["flip"] += 1
                byte ^= 1 << self.rng.randrange(8)
            out.append(byte)
            if self.rng.random() < self.insert:
                self.counts["insert"] += 1
                out.append(self.rng.randrange(256))
        return bytes(out)

    def write(self, data):
        self.inner.write(self.damage(data) if "write" in self.directions else data)

    def read(self, timeout):
        data = self.inner.read(timeout)
        return self.damage(data) if "read" in self.directions else data

    def close(self):
        self.inner.close()
