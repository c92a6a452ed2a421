"""The fit's mirror check on real and synthetic label maps: mean Dice of the template and of its mirror
image, each placed by ``moment_affine``, against the labels on the fit's 2 mm working grid, for the
maps as they are and flipped along their first axis, with all structures and with subsets of 3-4.
The fit takes the mirror when it wins by ``MIRROR_MARGIN`` (0.06).

    .venv/bin/python docs/benchmarks/recon/mirror_margins.py
"""

import glob
import time

import torch
from cardiocore.phantoms.heart import heart_label_phantom
from cardiocore.recon.fit import _prepare_target, mesh_moments, moment_affine, placed_overlap
from cardiocore.recon.rules import RuleSet, resolve_rule_set
from cardiocore.recon.template import load_template, read_label_map
torch.set_num_threads(2)
tpl = load_template(); mir = tpl.mirrored()
cases = []
for seed in (0, 1, 2, 3):
    ph = heart_label_phantom(shape=(64,64,64), spacing=(2.0,2.0,2.0), seed=seed)
    cases.append((f"phantom {seed}", ph.labels, ph.ijk_to_ras, RuleSet.default()))
mm = resolve_rule_set("mmwhs")
for f in sorted(glob.glob("../shared/data/mmwhs_ct_labels/*.nii.gz")):
    l, m = read_label_map(f); cases.append((f.split("/")[-1][:13], l, m, mm))
subsets = [None, ("lv_cavity","lv_myocardium","rv"), ("lv_cavity","lv_myocardium","rv","la"), ("lv_cavity","rv","la","ra"), ("lv_cavity","lv_myocardium","rv","aorta")]
for name, l, m, rules in cases:
    for flipped in (False, True):
        lab = l[::-1].copy() if flipped else l
        for sub in subsets:
            names = [n for n in rules.names if n in tpl.names and (lab == rules.structure(n).label).any() and (sub is None or n in sub)]
            t0 = time.perf_counter()
            target = _prepare_target(lab, m, [rules.structure(n).label for n in names], 2.0, 3000, torch.device("cpu"), torch.Generator().manual_seed(0), None)
            tm = list(zip(target.volumes, target.centroids, target.second_moments))
            res = []
            for t in (tpl, mir):
                base = [t.mesh(n) for n in names]
                aff = moment_affine([mesh_moments(v, f) for v, f in base], tm)
                t1 = time.perf_counter()
                res.append(placed_overlap(base, aff, target.labels, target.matrix))
                dt = time.perf_counter() - t1
            print(f"{name:14s} {'MIRRORED' if flipped else 'normal  '} {len(names)} structures: template {res[0]:.3f} mirror {res[1]:.3f} diff {res[1]-res[0]:+.3f}  ({dt*1000:.0f} ms per overlap)")
