//! DiffiT (time-dependent self-attention diffusion transformer) and LoRA adapters.
