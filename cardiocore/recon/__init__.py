"""CardioReconstruct (compute layer): multi-chamber heart meshes from a label map, free of
inter-structure violations.

``rules``: the structures (name, label, colour, aliases) and the relational rules between them
(A inside B, A disjoint from B) as data, with the default cardiac set and the MM-WHS coding.
``template``: the bundled multi-chamber template (one closed mesh per structure) and its builder.
``mie``: the MIE relational loss (soft winding-number occupancy, BCE on violation points).
``fit``: fit mode, the optimisation that deforms the template to a label map.
"""
