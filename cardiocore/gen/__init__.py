"""CardioGen (compute layer): left-ventricle shape generation with a mesh VAE and latent diffusion.

``data``: shape cohorts in vertex correspondence (arrays, mesh lists, the CAP atlas), subject-wise
splits and the invertible shape normalisation. ``vae``: the ChebConv mesh VAE over a
:class:`cardiocore.geometry.hierarchy.MeshHierarchy`, its loss and KL annealing.
``diffusion``: the denoiser and samplers over the VAE's latent space.
"""
