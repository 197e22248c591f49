"""Components whose build parameters are checked before the component exists.

A component that raises from ``__init__`` has already been created, and Amaranth warns that it
was "created but never used" when it is collected. :class:`CheckedComponent` runs the class's
:meth:`~CheckedComponent.check_parameters` from ``__new__``, before the object is created, so a
rejected configuration raises its error and nothing else.
"""

from amaranth.lib import wiring

__all__ = ["CheckedComponent"]


class CheckedComponent(wiring.Component):
    """A :class:`wiring.Component` that checks its constructor's arguments first."""

    @classmethod
    def check_parameters(cls, *args, **kwargs):
        """Raise if the constructor's arguments are out of range (called with the same
        arguments as ``__init__``, before the object exists)."""

    def __new__(cls, *args, **kwargs):
        cls.check_parameters(*args, **kwargs)
        # (src_loc_at=1: an "unused" warning names the line that built the component)
        return super().__new__(cls, src_loc_at=1)
