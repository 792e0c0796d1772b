"""MFT's shared contract: what every tool agrees on about files on disk.

Nothing here imports torch or transformers, so every CLI can import it at start-up for free.
"""

__version__ = "0.1.0"
