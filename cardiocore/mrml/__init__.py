"""The only bridge between CardioShape and Slicer (MRML nodes <-> arrays and meshes)."""
