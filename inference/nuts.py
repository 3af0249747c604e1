"""Moved to :mod:`inference.sampling.nuts`; this name stays for code that imports ``inference.nuts``."""

from inference.sampling.nuts import STATS, Chain, curvature, sample, transition  # noqa: F401
