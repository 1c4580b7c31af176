"""imagekit: cloud VM images end to end.

The ``imagekit`` package builds images (recipe → disk) and holds the primitives every stage
shares: :mod:`imagekit.errors`, :mod:`imagekit.run`, :mod:`imagekit.log`, :mod:`imagekit.state`.
``marketplace`` and ``context`` build on these primitives; ``imagekit`` imports neither.
"""

__version__ = "0.1.0"
