"""Score Predict networks side by side on the same held-out synthetic images.

Each model file is scored on 8 synthetic images (seed 1, i.e. other images than the 4 of
``cardio bench recon --held-out``) of MM-WHS ct_train_1012 (or of ``--labels``), finished as
Predict mode does; the script prints the medians over images and the self-intersecting face
pairs left per image.

    .venv/bin/python docs/benchmarks/recon/compare_predictors.py MODEL.pt [MODEL.pt ...] [--refine-steps N]
        [--labels FILE ...] [--images N] [--seed S] [--contrast random ct mr] [--decoder-votes V ...]

``bundled`` stands for the bundled predictor; ``--refine-steps N`` scores each model twice, as
predicted and refined against its own segmentation for N steps; ``--contrast`` picks the intensity
models of the images (``SynthOptions.contrast``); ``--decoder-votes`` scores the refinement with
each of these votes for the decoder's meshes in its target (``refine.fused_segmentation``; default
``refine.DECODER_VOTE``). The vote was chosen with ``bundled --refine-steps 60 --seed 3
--contrast random ct mr --decoder-votes ...`` (8 images of ct_train_1012 that no reported figure
uses; the commands and rule in ``refine-target-tuning.txt``). Outputs kept: 1.3.0, ``bundled --refine-steps 60
--contrast random ct mr``: ``refine-1.3.0.txt``, and on two of its training label maps
``bundled --refine-steps 60 --labels <ct_train_1005> <ct_train_1002> --images 3 --seed 2``:
``refine-1.3.0-training-maps.txt``; the same for 1.2.0 (``git show
843122d:Resources/Models/cardiorecon-whs-1.2.0.pt``): ``refine-1.2.0.txt``,
``refine-1.2.0-training-maps.txt``, and ``--contrast ct mr``: ``contrast-1.2.0.txt``; the 1.1.0 /
1.2.0 comparison: ``compare-1.1.0-1.2.0.txt`` (1.1.0: ``git show
f1127ef:Resources/Models/cardiorecon-whs-1.1.0.pt``).
"""

from __future__ import annotations

import argparse

import torch

from cardiocore.recon.predict import MeshPredictor
from cardiocore.recon.predict_eval import evaluate_on_synthetic, summarise
from cardiocore.recon.refine import DECODER_VOTE
from cardiocore.recon.synth import CONTRASTS, SynthOptions, load_cases

parser = argparse.ArgumentParser()
parser.add_argument("--refine-steps", type=int, default=0)
parser.add_argument("--labels", nargs="+", default=["../shared/data/mmwhs_ct_labels/ct_train_1012_label.nii.gz"],
                    help="MM-WHS label maps to synthesise images of (default the held-out ct_train_1012)")
parser.add_argument("--images", type=int, default=8, help="images per label map")
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--contrast", nargs="+", default=["random"], choices=CONTRASTS,
                    help="intensity models of the synthetic images (SynthOptions.contrast), each scored")
parser.add_argument("--decoder-votes", nargs="+", type=float, default=[DECODER_VOTE],
                    help="votes for the decoder's meshes in the refinement target, each scored")
parser.add_argument("models", nargs="+")
args = parser.parse_args()
torch.set_num_threads(2)
cases = load_cases(args.labels, "mmwhs")
for path in args.models:
    predictor = MeshPredictor.from_bundled(device="cpu") if path == "bundled" else MeshPredictor.load(path)
    for contrast in args.contrast:
        runs = [(0, None)] + [(args.refine_steps, vote) for vote in args.decoder_votes if args.refine_steps > 0]
        for steps, vote in runs:
            rows = evaluate_on_synthetic(predictor, cases, images_per_case=args.images, seed=args.seed,
                                         refine_steps=steps, decoder_vote=DECODER_VOTE if vote is None else vote,
                                         options=SynthOptions(contrast=contrast))
            medians = {k.removeprefix("median_"): round(v, 3) for k, v in summarise(rows, predictor.names).items()}
            print(path, f"contrast={contrast}", f"refine_steps={steps}", *([] if vote is None else [f"decoder_vote={vote}"]),
                  medians, "self-intersecting face pairs per image", [r["self_intersections"] for r in rows], flush=True)
