"""boxmask: turn bounding-box datasets into instance masks (IOG or GrabCut), resumably, at scale.

Box convention everywhere inside the library: ``(x0, y0, x1, y1)``, 0-based, inclusive integer
pixel indices (see ``boxmask.records``).
"""

__version__ = "0.1.0"
