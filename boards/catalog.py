"""The boards neurofabric builds for, and the validation of a build configuration.

:data:`BOARDS` maps a board name (as the ``build --board`` option takes it) to a :class:`Board`:
its amaranth-boards platform, how its clock reaches the PLL, which pins carry the host UART and
the status LEDs, the default chip configuration, and how ``openFPGALoader`` programs it.

:func:`check_config` turns the options of a build into a :class:`BuildConfig`, raising
:class:`BoardConfigError` (naming the option, the value and the allowed range) for anything the
chip, the PLL or the UART cannot do, before anything is built.
"""

import math
from dataclasses import dataclass, field
from fractions import Fraction

from neurofabric.boards.pll import PllError, ecp5_pll, ice40_pll, xilinx7_pll
from neurofabric.hdl.protocol import ChipShape

__all__ = ["Board", "BuildConfig", "BoardConfigError", "BOARDS", "get_board", "check_config",
           "LED_ROLES", "BAUD_TOLERANCE"]

#: What the status LEDs show, in the order boards assign them.
LED_ROLES = ("running", "link_error", "learning", "heartbeat")
#: Largest relative error of the UART baud rate the divisor may give (8N1 needs < ~4% overall).
BAUD_TOLERANCE = 0.02


class BoardConfigError(ValueError):
    """A build option is out of range for this board; nothing was built."""


def _icebreaker():
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    platform = ICEBreakerPlatform()
    platform.add_resources(platform.break_off_pmod)    # LEDs 2-6 (shipped attached as PMOD2)
    return platform


def _upduino_v3():
    from amaranth.build import Attrs
    from amaranth_boards.resources import UARTResource
    from amaranth_boards.upduino_v3 import UpduinoV3Platform

    platform = UpduinoV3Platform()
    # The UPduino v3's FT232H only programs the flash: the host UART is a 3.3 V USB-serial
    # adapter on header J0 pins 7 (FPGA rx, package pin 23) and 8 (FPGA tx, package pin 25).
    platform.add_resources([UARTResource(0, rx="7", tx="8", conn=("j", 0),
                                         attrs=Attrs(IO_STANDARD="SB_LVCMOS", PULLUP=1))])
    return platform


def _platform(module, cls):
    def make():
        import importlib
        return getattr(importlib.import_module(f"amaranth_boards.{module}"), cls)()
    return make


@dataclass(frozen=True)
class Board:
    """One supported board.

    ``clock``: how the reference reaches the PLL: ``"pad"`` (the clock pin is the iCE40 PLL's
    dedicated pad: ``SB_PLL40_PAD``), ``"pin"`` (a clock pin into the fabric), ``"hfosc"`` (the
    iCE40 48 MHz internal oscillator into ``SB_PLL40_CORE``). ``leds``: status role ->
    (resource, number, subsignal or None). ``buildable``: the toolchain is pip-installable
    (YoWASP); otherwise ``build`` only writes the build tree.
    """
    name: str
    description: str
    family: str                         #: "ice40" | "ecp5" | "xilinx7"
    platform_factory: object            #: () -> amaranth platform instance (a fresh one per build)
    device: str
    package: str
    clock: str
    clock_resource: str | None
    clock_in_mhz: float
    default: ChipShape
    default_clock_mhz: float
    leds: dict = field(default_factory=dict)
    reset_button: tuple | None = None   #: (resource, number): held = reset, if the board has one
    baud: int = 3_000_000
    buildable: bool = True
    openfpgaloader: tuple = ()          #: arguments naming the board or cable
    notes: str = ""

    def platform(self):
        return self.platform_factory()

    def pll(self, clock_mhz):
        """The PLL setting for `clock_mhz` (raises :class:`PllError` if unreachable)."""
        calculator = {"ice40": ice40_pll, "ecp5": ecp5_pll, "xilinx7": xilinx7_pll}[self.family]
        return calculator(self.clock_in_mhz, clock_mhz)


BOARDS = {board.name: board for board in (
    Board(
        name="icebreaker", description="1BitSquared iCEBreaker (iCE40 UP5K-SG48)",
        family="ice40", platform_factory=_icebreaker,
        device="up5k", package="sg48", clock="pad", clock_resource="clk12", clock_in_mhz=12,
        default=ChipShape(cores=1, neurons=256, axons=256, lanes=1, route_entries=256),
        default_clock_mhz=24,
        leds={"running": ("led", 1, None), "link_error": ("led", 0, None),
              "learning": ("led", 2, None), "heartbeat": ("led", 6, None)},
        reset_button=("button", 0),
        openfpgaloader=("-b", "icebreaker"),
        notes="FT2232H channel B is the UART (pins 6/9); LEDs 2-6 are on the snap-off PMOD."),
    Board(
        name="upduino3", description="tinyVision UPduino v3.x (iCE40 UP5K-SG48)",
        family="ice40", platform_factory=_upduino_v3,
        device="up5k", package="sg48", clock="hfosc", clock_resource=None, clock_in_mhz=48,
        default=ChipShape(cores=1, neurons=128, axons=128, lanes=1, route_entries=256),
        default_clock_mhz=24,
        leds={"running": ("rgb_led", 0, "g"), "link_error": ("rgb_led", 0, "r"),
              "learning": ("rgb_led", 0, "b")},
        openfpgaloader=("-b", "ice40_generic"),
        notes="Clock: the internal 48 MHz oscillator. UART on header J0 pins 7 (rx) and 8 (tx) "
              "through an external 3.3 V USB-serial adapter."),
    Board(
        name="ulx3s-85f", description="Radiona ULX3S (ECP5 LFE5U-85F-6BG381)",
        family="ecp5", platform_factory=_platform("ulx3s", "ULX3S_85F_Platform"),
        device="LFE5U-85F", package="CABGA381", clock="pin", clock_resource="clk25", clock_in_mhz=25,
        default=ChipShape(cores=5, neurons=256, axons=256, lanes=8, route_entries=1024),
        default_clock_mhz=50,
        leds={"running": ("led", 0, None), "link_error": ("led", 1, None),
              "learning": ("led", 2, None), "heartbeat": ("led", 7, None)},
        openfpgaloader=("-b", "ulx3s"),
        notes="FT231X USB-serial (pins M1/L4)."),
    Board(
        name="colorlight-5a75b", description="Colorlight 5A-75B v7.0 (ECP5 LFE5U-25F-6BG256)",
        family="ecp5", platform_factory=_platform("colorlight_5a75b_r7_0", "Colorlight_5A75B_R70Platform"),
        device="LFE5U-25F", package="CABGA256", clock="pin", clock_resource="clk25", clock_in_mhz=25,
        default=ChipShape(cores=4, neurons=128, axons=128, lanes=8, route_entries=512),
        default_clock_mhz=50, baud=1_000_000,
        openfpgaloader=("-b", "colorlight"),
        notes="No USB-serial on board: the UART is on J19 (tx = the DATA_LED- pad P11, rx = the "
              "KEY+ pad M13), through an external 3.3 V adapter; the only LED is that tx pin."),
    Board(
        name="arty-a7-35", description="Digilent Arty A7-35T (Xilinx XC7A35T, build tree only)",
        family="xilinx7", platform_factory=_platform("arty_a7", "ArtyA7_35Platform"),
        device="xc7a35ti", package="csg324", clock="pin", clock_resource="clk100", clock_in_mhz=100,
        default=ChipShape(cores=4, neurons=256, axons=256, lanes=8, route_entries=1024),
        default_clock_mhz=100,
        leds={"running": ("led", 0, None), "link_error": ("led", 1, None),
              "learning": ("led", 2, None), "heartbeat": ("led", 3, None)},
        buildable=False, openfpgaloader=("-b", "arty_a7_35t"),
        notes="Vivado is not pip-installable: `build` writes the build tree (build_top.sh) only."),
)}


def get_board(name):
    """The :class:`Board` called `name`; :class:`BoardConfigError` listing the boards if unknown."""
    if name not in BOARDS:
        raise BoardConfigError(f"board: {name!r} is not a known board; one of {', '.join(sorted(BOARDS))}")
    return BOARDS[name]


@dataclass(frozen=True)
class BuildConfig:
    """Everything a bitstream depends on besides the source: board, chip shape, clock, baud."""
    board: Board
    shape: ChipShape
    clock_mhz: float        #: requested
    pll: object             #: the PLL setting; ``pll.f_out`` is the clock actually generated
    baud: int
    divisor: int            #: UART clock divisor: round(f_out / baud)

    @property
    def f_clk_mhz(self):
        return float(self.pll.f_out)

    @property
    def baud_actual(self):
        return float(self.pll.f_out) * 1e6 / self.divisor

    def summary(self):
        """A JSON-friendly description (written to the build folder, keys the build cache)."""
        return {
            "board": self.board.name, "family": self.board.family, "device": self.board.device,
            "package": self.board.package,
            "cores": self.shape.cores, "neurons": self.shape.neurons, "axons": self.shape.axons,
            "lanes": self.shape.lanes, "route_entries": self.shape.route_entries,
            "clock_mhz_requested": self.clock_mhz, "clock_mhz": round(self.f_clk_mhz, 6),
            "pll": {k: v for k, v in vars(self.pll).items() if k not in ("f_in", "f_requested")},
            "baud": self.baud, "uart_divisor": self.divisor, "baud_actual": round(self.baud_actual, 1),
        }


def _int_option(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise BoardConfigError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")
    if not lo <= value <= hi:
        raise BoardConfigError(f"{name} = {value} is out of range: allowed [{lo}, {hi}]")
    return value


def check_config(board, *, cores=None, neurons=None, axons=None, lanes=None, route_entries=None,
                 clock_mhz=None, baud=None):
    """Validate the options of a build of `board` (a name or a :class:`Board`); missing options
    take the board's defaults. Returns a :class:`BuildConfig` or raises :class:`BoardConfigError`."""
    if not isinstance(board, Board):
        board = get_board(board)
    d = board.default
    cores = _int_option("cores", d.cores if cores is None else cores, 1, 255)
    neurons = _int_option("neurons", d.neurons if neurons is None else neurons, 1, 1 << 16)
    axons = _int_option("axons", d.axons if axons is None else axons, 1, 1 << 16)
    lanes = _int_option("lanes", d.lanes if lanes is None else lanes, 1, 64)
    route_entries = _int_option("route_entries", d.route_entries if route_entries is None else route_entries,
                                1, 1 << 16)
    if lanes & (lanes - 1):
        raise BoardConfigError(f"lanes = {lanes} must be a power of two in [1, 64]")
    if neurons % lanes:
        raise BoardConfigError(f"neurons = {neurons} must be a multiple of lanes = {lanes}")
    if axons * neurons > 1 << 24:
        raise BoardConfigError(f"axons * neurons = {axons * neurons} is out of range: allowed [1, {1 << 24}] "
                               f"(the WEIGHT address space)")
    shape = ChipShape(cores=cores, neurons=neurons, axons=axons, lanes=lanes, route_entries=route_entries)

    clock_mhz = board.default_clock_mhz if clock_mhz is None else clock_mhz
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not math.isfinite(clock_mhz):
        raise BoardConfigError(f"clock_mhz must be a number of MHz, not {clock_mhz!r}")
    try:
        pll = board.pll(clock_mhz)
    except PllError as error:
        raise BoardConfigError(f"clock_mhz: {error}") from None
    if abs(pll.f_out - Fraction(str(clock_mhz))) > Fraction(str(clock_mhz)) / 100:
        raise BoardConfigError(
            f"clock_mhz = {clock_mhz:g}: the nearest frequency the {board.family} PLL makes from "
            f"{board.clock_in_mhz:g} MHz is {float(pll.f_out):.4g} MHz (more than 1% off); ask for that")

    baud = board.baud if baud is None else baud
    _int_option("baud", baud, 9600, 12_000_000)
    divisor = round(pll.f_out * 1_000_000 / baud)
    if divisor < 4:
        raise BoardConfigError(f"baud = {baud} is out of range for a {float(pll.f_out):g} MHz clock: "
                               f"allowed [9600, {int(pll.f_out * 1_000_000 // 4)}] (divisor >= 4)")
    error = abs(float(pll.f_out) * 1e6 / divisor - baud) / baud
    if error > BAUD_TOLERANCE:
        raise BoardConfigError(f"baud = {baud}: a {float(pll.f_out):g} MHz clock gives it only with a "
                               f"{error:.1%} error (allowed {BAUD_TOLERANCE:.0%}); pick a clock that "
                               f"is a multiple of the baud rate")
    return BuildConfig(board=board, shape=shape, clock_mhz=float(clock_mhz), pll=pll, baud=baud,
                       divisor=divisor)
