"""spurjax: Diffusion Driven Balancing (DDB) in JAX/Flax."""

__version__ = "0.1.0"
