"""The board top-level: clock, reset, the UART host link on the board's pins, status LEDs.

:class:`BoardTop` wraps :class:`neurofabric.hdl.top.UartLinkedChip` for one
:class:`~neurofabric.boards.catalog.BuildConfig`:

* **clock**: the board's oscillator through its PLL (settings from
  :mod:`neurofabric.boards.pll`) drives the ``sync`` domain at ``config.f_clk_mhz``, which is
  also handed to the place-and-route tool as the timing constraint;
* **reset**: held while the PLL is unlocked, during a power-on delay (iCE40 block RAM reads
  garbage for a few microseconds after configuration) and while the board's reset button (if
  any) is pressed; released synchronously to the clock by a ``ResetSynchronizer``;
* **host link**: the board's ``uart`` resource (requested with ``dir="-"`` and driven through
  ``io.Buffer``) at ``config.baud`` with divisor ``config.divisor``;
* **status LEDs** (as many as the board has, :data:`~neurofabric.boards.catalog.LED_ROLES`):
  *running* (the chip runs time steps; each run lights it for at least 50 ms),
  *link_error* (lit 250 ms after each UART framing error or overrun),
  *learning* (the chip's ``learning`` output, when the chip has one),
  *heartbeat* (toggles at 1 Hz: the clock runs and the design is out of reset).
"""

import math

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from neurofabric.boards.pll import Ecp5PLL, Ice40PLL, Xilinx7PLL
from neurofabric.hdl.top import UartLinkedChip

__all__ = ["BoardTop", "POWER_ON_DELAY_US"]

#: Reset is held this long after the PLL locks (iCE40 block RAM needs ~3 us after configuration).
POWER_ON_DELAY_US = 20


class _Ticker(Elaboratable):
    """``tick`` pulses once every ``2**bits`` cycles: the carry out of a free-running counter
    (one carry chain, no comparator, so it never limits the clock)."""

    def __init__(self, bits):
        self.bits = bits
        self.tick = Signal()

    def elaborate(self, platform):
        m = Module()
        count = Signal(self.bits)
        m.d.sync += Cat(count, self.tick).eq(count + 1)
        return m


class _PulseStretcher(Elaboratable):
    """``o`` is high while ``i`` is high and until `ticks` pulses of ``tick`` have passed since
    ``i`` was last high (so for between ``ticks - 1`` and ``ticks`` tick periods)."""

    def __init__(self, ticks):
        self.ticks = ticks
        self.i = Signal()
        self.tick = Signal()
        self.o = Signal()

    def elaborate(self, platform):
        m = Module()
        left = Signal(range(self.ticks + 1))
        with m.If(self.i):
            m.d.sync += left.eq(self.ticks)
        with m.Elif(self.tick & (left != 0)):
            m.d.sync += left.eq(left - 1)
        m.d.comb += self.o.eq(self.i | (left != 0))
        return m


def board_chip_factory(family):
    """The real chip as a board builds it: the host link holds each memory request until its
    response, so the chip keeps no copy (``request_held``); on iCE40 the router's axon and host
    FIFOs hold 4 events instead of 8 (logic cells are the UP5K's scarce resource; the depths
    change throughput only, never results: docs/router.md)."""
    def factory(shape):
        from neurofabric.hdl.chip import Chip
        depths = dict(axon_fifo_depth=4, host_fifo_depth=4) if family == "ice40" else {}
        return Chip(shape, request_held=True, **depths)
    return factory


class BoardTop(Elaboratable):
    """The design a bitstream is built from; see the module docstring.

    `chip_factory` is passed to :class:`~neurofabric.hdl.top.LinkedChip` (default: the real
    chip, :func:`board_chip_factory`). IDENTIFY names the build after the board. ``linked`` is
    the :class:`UartLinkedChip`; ``clk`` the PLL output (the ``sync`` clock); after elaboration
    ``statuses`` maps each LED role to the signal it shows.
    """

    def __init__(self, config, *, chip_factory=None):
        self.config = config
        if chip_factory is None:
            chip_factory = board_chip_factory(config.board.family)
        self.linked = UartLinkedChip(config.shape, divisor=config.divisor, chip_factory=chip_factory,
                                     build_name=config.board.name)
        self.clk = Signal()     # the PLL output (carries the timing constraint)

    # --- clocking ---------------------------------------------------------------------------
    def _pll(self, m, platform):
        board, config = self.config.board, self.config
        if board.clock == "pad":
            pad = platform.request(board.clock_resource, dir="-")
            pll = Ice40PLL(config.pll, pad=pad.io)
        elif board.clock == "hfosc":
            oscillator = Signal()
            m.submodules.hfosc = Instance("SB_HFOSC", p_CLKHF_DIV="0b00", i_CLKHFEN=1, i_CLKHFPU=1,
                                          o_CLKHF=oscillator)
            pll = Ice40PLL(config.pll, reference=oscillator)
        elif board.clock == "pin":
            clock_pin = platform.request(board.clock_resource, dir="-")
            m.submodules.clock_buffer = clock_buffer = io.Buffer("i", clock_pin)
            cls = {"ecp5": Ecp5PLL, "xilinx7": Xilinx7PLL}[board.family]
            pll = cls(config.pll, reference=clock_buffer.i)
        else:
            raise ValueError(f"board {board.name}: clock = {board.clock!r} is not one of 'pad', 'hfosc', 'pin'")
        m.submodules.pll = pll
        m.d.comb += self.clk.eq(pll.clk)
        platform.add_clock_constraint(self.clk, float(config.pll.f_out) * 1e6)
        return pll

    def elaborate(self, platform):
        m = Module()
        config, board = self.config, self.config.board
        f_clk = float(config.pll.f_out) * 1e6

        # --- clock and reset ------------------------------------------------------------------
        pll = self._pll(m, platform)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(self.clk)

        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(self.clk)
        delay = max(1, round(POWER_ON_DELAY_US * f_clk / 1e6))
        por_count = Signal(range(delay + 1))
        por_done = Signal()
        with m.If(~pll.locked):
            m.d.por += por_count.eq(0)
        with m.Elif(por_count != delay):
            m.d.por += por_count.eq(por_count + 1)
        m.d.comb += por_done.eq(por_count == delay)

        button = Const(0)
        if board.reset_button is not None:
            name, number = board.reset_button
            m.submodules.reset_button = reset_button = io.Buffer(
                "i", platform.request(name, number, dir="-"))
            button = reset_button.i
        m.submodules.reset_sync = ResetSynchronizer(~por_done | button, domain="sync")

        # --- the chip and its UART ------------------------------------------------------------
        m.submodules.linked = linked = self.linked
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += [linked.uart_rx.eq(uart_rx.i), uart_tx.o.eq(linked.uart_tx)]

        # --- status LEDs ------------------------------------------------------------------------
        chip = linked.linked.chip
        statuses = {}
        # LED timing counts ticks of about a millisecond (2**k cycles)
        tick_bits = max(1, round(math.log2(f_clk / 1000)))
        tick_ms = (1 << tick_bits) / f_clk * 1000
        m.submodules.ticker = ticker = _Ticker(tick_bits)
        m.submodules.running_led = running = _PulseStretcher(max(1, round(50 / tick_ms)))
        m.d.comb += [running.i.eq(chip.running), running.tick.eq(ticker.tick)]
        statuses["running"] = running.o

        m.submodules.error_led = link_error = _PulseStretcher(max(1, round(250 / tick_ms)))
        last_errors = Signal.like(linked.rx_errors)
        m.d.sync += last_errors.eq(linked.rx_errors)
        m.d.comb += [link_error.i.eq(linked.rx_errors != last_errors), link_error.tick.eq(ticker.tick)]
        statuses["link_error"] = link_error.o

        if "learning" in chip.signature.members:
            statuses["learning"] = chip.learning
        else:
            statuses["learning"] = Const(0)

        half_second = max(1, round(500 / tick_ms))
        beat = Signal()
        beat_count = Signal(range(half_second))
        with m.If(ticker.tick):
            with m.If(beat_count == half_second - 1):
                m.d.sync += [beat_count.eq(0), beat.eq(~beat)]
            with m.Else():
                m.d.sync += beat_count.eq(beat_count + 1)
        statuses["heartbeat"] = beat

        requested = {}
        for role, (name, number, subsignal) in board.leds.items():
            if (name, number) not in requested:
                requested[name, number] = platform.request(name, number, dir="-")
            resource = requested[name, number]
            led = io.Buffer("o", getattr(resource, subsignal) if subsignal else resource)
            m.submodules[f"led_{role}"] = led
            m.d.comb += led.o.eq(statuses[role])
        self.statuses = statuses
        return m
