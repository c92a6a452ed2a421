"""Where CardioGen's clinical-mean gap comes from, against the split the model was trained on.

For the bundled model, per phase: the mean of each clinical index over the 1,200 training meshes,
and the % difference of the mean of (a) their VAE reconstructions, (b) 1,200 PLMS-20 samples of
the phase's diffusion model, (c) 1,200 decodes of latents drawn from a Gaussian fitted to the
training latents. Run from the repository root (about 9 min on 2 CPU cores):

    .venv/bin/python docs/benchmarks/cardiogen-eval/bias_vs_training.py

Output of 2026-12-05: docs/benchmarks/cardiogen-eval/bias_vs_training.txt
"""

import numpy as np
import torch

from cardiocore.gen.data import load_cap_atlas
from cardiocore.gen.model import CardioGenModel
from cardiocore.gen.training import split_as_recorded

N_SAMPLES = 1200

torch.set_num_threads(2)
model = CardioGenModel.from_bundled(device="cpu")
model.eval()
cohort = load_cap_atlas("../shared/data/cap_lv_atlas/cap_lv_atlas_dev.npz")
training = split_as_recorded(cohort, model.card["split"])[0]
for phase in ["ED", "ES"]:
    real = training.phase(phase).verts.float()
    with torch.no_grad():
        latents = model.encode(real)
        sampled = model.diffusion[phase].sample(N_SAMPLES, 20, "plms", generator=torch.Generator().manual_seed(0))
        gaussian = torch.distributions.MultivariateNormal(latents.mean(0), torch.cov(latents.T)).sample((N_SAMPLES,))
        indices = {
            "real": model.clinical(real),
            "recon": model.clinical(model.decode(latents)),
            "diff": model.clinical(model.decode(sampled)),
            "gauss": model.clinical(model.decode(gaussian)),
        }
    print(phase, "latent mean abs diff (sample vs train):", (sampled.mean(0) - latents.mean(0)).abs().max().item(),
          "std ratio", (sampled.std(0) / latents.std(0)).numpy().round(2))
    for name, values in indices["real"].items():
        mean = np.mean(values)
        shifts = " ".join(f"{kind} {np.mean(indices[kind][name]) / mean * 100 - 100:+.2f}%"
                          for kind in ("recon", "diff", "gauss"))
        print(f"  {name:20s} real {mean:8.2f} {shifts}")
