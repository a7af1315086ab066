"""Storage layouts behind `tensor`: see `layout` for the layouts and their addressing contract."""

from . import layout

__all__ = ["layout"]
