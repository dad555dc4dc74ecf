//! DDPM noise schedule and training objective, and the DDIM sampler.
