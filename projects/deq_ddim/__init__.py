"""DEQ-DDIM: diffusion sampling and inversion as one equilibrium over all timesteps.

Pokle, Geng, Kolter, "Deep Equilibrium Approaches to Diffusion Models", NeurIPS 2022
(arXiv 2210.12867).
"""
