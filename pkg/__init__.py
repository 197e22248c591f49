"""neurofabric: an open neuromorphic processor for FPGAs.

Subpackages: :mod:`neurofabric.hdl` (gateware), :mod:`neurofabric.host` (model and host library),
:mod:`neurofabric.sim` (simulation support), :mod:`neurofabric.boards` (board top-levels).
"""

__version__ = "0.1.0"
