"""Board top-levels and bitstream builds through the pip-installed open toolchain.

``catalog`` (the boards and build-option validation), ``pll`` (PLL settings and primitives),
``top`` (the board top around the chip), ``build`` (the ``build`` / ``program`` / ``list``
commands), ``synth`` (out-of-context synthesis of one component). See docs/boards.md.
"""
