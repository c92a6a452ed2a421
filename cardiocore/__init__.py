"""CardioShape back-end.

The compute layer (``geometry``, ``metrics``, ``phantoms``, ``train``, the methods) depends on
torch, numpy, scipy, monai and torch_geometric only. ``cardiocore.mrml`` is the only package that
talks to Slicer (the running application, or the ``slicer-core`` wheel headless).

Conventions everywhere: coordinates in RAS millimetres, meshes as ``verts (V, 3) float`` and
``faces (F, 3) int64`` triangles, volumes in ml (1 ml = 1000 mm^3), masses in g.
"""

__version__ = "0.1.0"
