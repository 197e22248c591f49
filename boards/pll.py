"""PLL settings computed in Python, and the PLL primitives of the board tops.

The divider searches follow the vendor tools' own calculators, so a board top needs no external
program and the tests can check every setting:

* :func:`ice40_pll` is ``icepll`` (Project IceStorm) in SIMPLE feedback mode: the first
  ``(DIVR, DIVF, DIVQ)`` in ascending order with the smallest output error;
* :func:`ecp5_pll` is ``ecppll`` (Project Trellis) with CLKOP feedback: the smallest error,
  ties going to the VCO nearest 600 MHz, CLKOP shifted by 180 degrees (``CLKOP_CPHASE``) as
  Lattice's tools do;
* :func:`xilinx7_pll` is a PLLE2_BASE search for 7-series parts (speed grade -1 ranges).

Arithmetic is exact (``fractions.Fraction``), frequencies are in MHz. A request that no setting
can reach raises :class:`PllError` naming the value and the allowed range.

:class:`Ice40PLL`, :class:`Ecp5PLL` and :class:`Xilinx7PLL` instantiate the primitives with
those settings; each drives a clock signal ``clk`` and a ``locked`` signal.
"""

from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import Elaboratable, Instance, Module, Signal

__all__ = [
    "PllError", "Ice40PllConfig", "Ecp5PllConfig", "Xilinx7PllConfig",
    "ice40_pll", "ecp5_pll", "xilinx7_pll", "Ice40PLL", "Ecp5PLL", "Xilinx7PLL",
]


class PllError(ValueError):
    """No PLL setting reaches the requested frequency (or an input is out of range)."""


def _mhz(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise PllError(f"{name} must be a number of MHz in [{lo}, {hi}], not {value!r}")
    exact = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    if not lo <= exact <= hi:
        raise PllError(f"{name} = {float(exact):g} MHz is out of range: allowed [{lo}, {hi}] MHz")
    return exact


# --- iCE40 (SB_PLL40_*, SIMPLE feedback) -----------------------------------------------------

ICE40_PLL_IN = (10, 133)            #: MHz, reference input
ICE40_PFD = (10, 133)               #: MHz, after DIVR
ICE40_VCO = (533, 1066)             #: MHz
ICE40_PLL_OUT = (16, 275)           #: MHz


@dataclass(frozen=True)
class Ice40PllConfig:
    """``f_out = f_in / (DIVR + 1) * (DIVF + 1) / 2**DIVQ`` (SIMPLE feedback)."""
    f_in: Fraction
    f_requested: Fraction
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_pfd(self):
        return self.f_in / (self.divr + 1)

    @property
    def f_vco(self):
        return self.f_pfd * (self.divf + 1)

    @property
    def f_out(self):
        return self.f_vco / (1 << self.divq)


def _ice40_filter_range(f_pfd):
    for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if f_pfd < limit:
            return value
    return 6


def ice40_pll(f_in, f_out):
    """The ``icepll`` setting for `f_in` -> `f_out` MHz (the achieved ``f_out`` may differ)."""
    f_in = _mhz("f_in", f_in, *ICE40_PLL_IN)
    f_req = _mhz("f_out", f_out, *ICE40_PLL_OUT)
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not ICE40_PFD[0] <= f_pfd <= ICE40_PFD[1]:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not ICE40_VCO[0] <= f_vco <= ICE40_VCO[1]:
                continue
            for divq in range(1, 7):
                error = abs(f_vco / (1 << divq) - f_req)
                if best is None or error < best[0]:
                    best = (error, divr, divf, divq)
    if best is None:
        raise PllError(f"f_in = {float(f_in):g} MHz: no iCE40 PLL setting has a VCO in {ICE40_VCO} MHz")
    _, divr, divf, divq = best
    return Ice40PllConfig(f_in=f_in, f_requested=f_req, divr=divr, divf=divf, divq=divq,
                          filter_range=_ice40_filter_range(f_in / (divr + 1)))


# --- ECP5 (EHXPLLL, CLKOP feedback) ------------------------------------------------------------

ECP5_PLL_IN = (8, 400)
ECP5_PFD = (Fraction(3125, 1000), 400)
ECP5_VCO = (400, 800)
ECP5_PLL_OUT = (10, 400)


@dataclass(frozen=True)
class Ecp5PllConfig:
    """``f_out = f_in / CLKI_DIV * CLKFB_DIV``; ``f_vco = f_out * CLKOP_DIV``."""
    f_in: Fraction
    f_requested: Fraction
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int

    @property
    def f_pfd(self):
        return self.f_in / self.clki_div

    @property
    def f_out(self):
        return self.f_pfd * self.clkfb_div

    @property
    def f_vco(self):
        return self.f_out * self.clkop_div


def ecp5_pll(f_in, f_out):
    """The ``ecppll`` setting for `f_in` -> `f_out` MHz."""
    f_in = _mhz("f_in", f_in, *ECP5_PLL_IN)
    f_req = _mhz("f_out", f_out, *ECP5_PLL_OUT)
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not ECP5_PFD[0] <= f_pfd <= ECP5_PFD[1]:
            continue
        for clkfb_div in range(1, 81):
            f_got = f_pfd * clkfb_div
            # every CLKOP_DIV gives the same error: take the one with the VCO nearest 600 MHz
            # (the lower one on a tie, as ecppll's ascending search does)
            lo = max(1, int(-(-ECP5_VCO[0] // f_got)))
            hi = min(128, int(ECP5_VCO[1] // f_got))
            middle = int(600 // f_got)
            candidates = [d for d in (lo, hi, middle, middle + 1) if lo <= d <= hi]
            if not candidates:
                continue
            nearest = min(candidates, key=lambda d: (abs(f_got * d - 600), d))
            f_vco = f_got * nearest
            error = abs(f_got - f_req)
            if best is None or error < best[0] or (
                    error == best[0] and abs(f_vco - 600) < abs(best[1] - 600)):
                best = (error, f_vco, clki_div, clkfb_div, nearest)
    if best is None:
        raise PllError(f"f_out = {float(f_req):g} MHz: no ECP5 PLL setting reaches it from "
                       f"{float(f_in):g} MHz")
    _, _, clki_div, clkfb_div, clkop_div = best
    return Ecp5PllConfig(f_in=f_in, f_requested=f_req, clki_div=clki_div, clkfb_div=clkfb_div,
                         clkop_div=clkop_div, clkop_cphase=clkop_div // 2)


# --- Xilinx 7 series (PLLE2_BASE), speed grade -1 ----------------------------------------------

XILINX7_PLL_IN = (19, 800)
XILINX7_PFD = (19, 450)
XILINX7_VCO = (800, 1600)
XILINX7_PLL_OUT = (Fraction(625, 100), 800)


@dataclass(frozen=True)
class Xilinx7PllConfig:
    """``f_out = f_in * CLKFBOUT_MULT / DIVCLK_DIVIDE / CLKOUT0_DIVIDE``."""
    f_in: Fraction
    f_requested: Fraction
    divclk_divide: int
    clkfbout_mult: int
    clkout0_divide: int

    @property
    def f_vco(self):
        return self.f_in * self.clkfbout_mult / self.divclk_divide

    @property
    def f_out(self):
        return self.f_vco / self.clkout0_divide


def xilinx7_pll(f_in, f_out):
    """A PLLE2_BASE setting for `f_in` -> `f_out` MHz: smallest error, then highest VCO."""
    f_in = _mhz("f_in", f_in, *XILINX7_PLL_IN)
    f_req = _mhz("f_out", f_out, *XILINX7_PLL_OUT)
    best = None
    for divclk in range(1, 57):
        if not XILINX7_PFD[0] <= f_in / divclk <= XILINX7_PFD[1]:
            continue
        for mult in range(2, 65):
            f_vco = f_in * mult / divclk
            if not XILINX7_VCO[0] <= f_vco <= XILINX7_VCO[1]:
                continue
            # the nearest divider is the floor or the ceiling of f_vco / f_out
            for div in {max(1, min(128, int(f_vco // f_req) + k)) for k in (0, 1)}:
                error = abs(f_vco / div - f_req)
                if best is None or error < best[0] or (error == best[0] and f_vco > best[1]):
                    best = (error, f_vco, divclk, mult, div)
    if best is None:
        raise PllError(f"f_in = {float(f_in):g} MHz: no PLLE2 setting has a VCO in {XILINX7_VCO} MHz")
    _, _, divclk, mult, div = best
    return Xilinx7PllConfig(f_in=f_in, f_requested=f_req, divclk_divide=divclk, clkfbout_mult=mult,
                            clkout0_divide=div)


# --- Primitives ---------------------------------------------------------------------------------

class _PLL(Elaboratable):
    """What every PLL primitive wrapper has: its divider `config`, its `reference` clock, and the
    ``clk`` (output) and ``locked`` signals."""

    def __init__(self, config, *, reference):
        self.config = config
        self.reference = reference
        self.clk = Signal()
        self.locked = Signal()


class Ice40PLL(_PLL):
    """``SB_PLL40_PAD`` (reference from the PLL's dedicated pad `pad`, an IO port) or
    ``SB_PLL40_CORE`` (reference from the fabric signal `reference`), SIMPLE feedback, output on
    the global network (``PLLOUTGLOBAL``) as ``clk``; ``locked`` is the PLL's ``LOCK``."""

    def __init__(self, config, *, pad=None, reference=None):
        if (pad is None) == (reference is None):
            raise ValueError("Ice40PLL: give exactly one of pad (an IO port) or reference (a signal)")
        super().__init__(config, reference=reference)
        self.pad = pad

    def elaborate(self, platform):
        m = Module()
        c = self.config
        params = dict(
            p_FEEDBACK_PATH="SIMPLE", p_DIVR=c.divr, p_DIVF=c.divf, p_DIVQ=c.divq,
            p_FILTER_RANGE=c.filter_range,
            i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=self.clk, o_LOCK=self.locked,
        )
        if self.pad is not None:
            m.submodules.pll = Instance("SB_PLL40_PAD", io_PACKAGEPIN=self.pad, **params)
        else:
            m.submodules.pll = Instance("SB_PLL40_CORE", i_REFERENCECLK=self.reference, **params)
        return m


def _mhz_attr(value):
    return f"{float(value):.6g}"


class Ecp5PLL(_PLL):
    """``EHXPLLL`` with CLKOP feedback; ``clk`` = CLKOP, ``locked`` = LOCK."""

    def elaborate(self, platform):
        m = Module()
        c = self.config
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=_mhz_attr(c.f_in), a_FREQUENCY_PIN_CLKOP=_mhz_attr(c.f_out),
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=c.clki_div, p_CLKFB_DIV=c.clkfb_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=c.clkop_div, p_CLKOP_CPHASE=c.clkop_cphase,
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            i_RST=0, i_STDBY=0, i_CLKI=self.reference, i_CLKFB=self.clk,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=self.clk, o_LOCK=self.locked,
        )
        return m


class Xilinx7PLL(_PLL):
    """``PLLE2_BASE`` with its feedback looped back, CLKOUT0 through a ``BUFG`` as ``clk``."""

    def elaborate(self, platform):
        m = Module()
        c = self.config
        feedback = Signal()
        unbuffered = Signal()
        m.submodules.pll = Instance(
            "PLLE2_BASE",
            p_CLKIN1_PERIOD=round(1000 / float(c.f_in), 3), p_DIVCLK_DIVIDE=c.divclk_divide,
            p_CLKFBOUT_MULT=c.clkfbout_mult, p_CLKOUT0_DIVIDE=c.clkout0_divide,
            i_CLKIN1=self.reference, i_CLKFBIN=feedback, o_CLKFBOUT=feedback,
            i_RST=0, i_PWRDWN=0, o_CLKOUT0=unbuffered, o_LOCKED=self.locked,
        )
        m.submodules.bufg = Instance("BUFG", i_I=unbuffered, o_O=self.clk)
        return m
