"""subtomo-embed: CryoSiam-compatible subtomogram embeddings for cryo-electron tomography."""

__version__ = "0.1.0"
