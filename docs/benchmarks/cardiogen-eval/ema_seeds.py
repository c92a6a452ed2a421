"""Run-to-run spread of CardioGen's ED diffusion training, with and without a moving average of the weights.

On the bundled model's VAE latents of its training split, the ED diffusion model is retrained with
the default recipe for seeds 1-3 (a plain loop, the Trainer's schedule: Adam, cosine decay, clip
1.0); for each run, the last weights and their moving average (decay 0.999, warmed up as in
TrainConfig.ema_decay) draw 6,000 PLMS-20 samples, and the mean cavity and myocardial volumes are
compared with those of the 1,200 training ED shapes. About 7 minutes on 2 CPU cores:

    .venv/bin/python docs/benchmarks/cardiogen-eval/ema_seeds.py

Output of 2026-12-06: ema_seeds.txt beside this file.
"""

import copy

import numpy as np
import torch

from cardiocore.gen.clinical import surface_volumes_ml
from cardiocore.gen.data import load_cap_atlas
from cardiocore.gen.model import CardioGenModel
from cardiocore.gen.training import GenTrainingSpec, _diffusion_stage, split_as_recorded, subject_conditions
from cardiocore.geometry.mesh import region_faces

torch.set_num_threads(2)
model = CardioGenModel.from_bundled(device="cpu")
model.eval()
train = split_as_recorded(load_cap_atlas("../shared/data/cap_lv_atlas/cap_lv_atlas_dev.npz"), model.card["split"])[0]
epicardium = model.regions["epicardium"]
epicardium_faces = region_faces(model.faces, epicardium, model.n_vertices)


def volumes(verts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Cavity and myocardial volumes (N,) ml of meshes (N, V, 3) mm."""
    cavity = model.cavity_ml(verts)
    return cavity, surface_volumes_ml(verts[:, epicardium], epicardium_faces) - cavity


real_ed = train.phase("ED").verts
real_cavity, real_myocardium = volumes(real_ed)


def report(label: str, diffusion: torch.nn.Module) -> None:
    with torch.no_grad():
        cavity, myocardium = volumes(model.decode(diffusion.sample(6000, 20, "plms", generator=torch.Generator().manual_seed(3))))
    print(f"{label:24s} cavity {cavity.mean() / real_cavity.mean() * 100 - 100:+.2f} %  "
          f"myocardium {myocardium.mean() / real_myocardium.mean() * 100 - 100:+.2f} %", flush=True)


report("bundled 1.0.0 ED", model.diffusion["ED"])
spec = GenTrainingSpec()
with torch.no_grad():
    latents = model.encode(train.verts.float())
for seed in (1, 2, 3):
    torch.manual_seed(seed)
    diffusion, data, _ = _diffusion_stage("ED", spec, latents, train, subject_conditions(train), None, None, None)
    average = copy.deepcopy(diffusion)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=spec.diffusion_lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.diffusion_steps, spec.diffusion_lr * 0.02)
    order = torch.Generator().manual_seed(seed)
    diffusion.train()
    for step in range(spec.diffusion_steps):
        batch = data.latents[torch.randint(0, len(data.latents), (spec.diffusion_batch,), generator=order)]
        loss = diffusion.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        weight = 1.0 - min(spec.diffusion_ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for kept, current in zip(average.parameters(), diffusion.parameters()):
                kept.lerp_(current, weight)
    diffusion.eval()
    average.eval()
    report(f"seed {seed}, last weights", diffusion)
    report(f"seed {seed}, moving average", average)
