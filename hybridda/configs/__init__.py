"""Named literature settings, one module per paper, each with its published numbers."""

from . import sakov2008 as sakov2008
from . import sakov2012 as sakov2012

__all__ = ["sakov2008", "sakov2012"]
