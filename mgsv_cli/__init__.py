"""mgsv: background music for short videos, built on MaDe (Music Grounding by Short Video).

The library is organised one module per stage; heavy modules (torch, encoders)
are imported only by the functions that need them, so importing ``mgsv_cli`` is cheap.
"""

__version__ = "0.1.0"
