"""thoughtlab: post-training research on visible and latent reasoning models."""
