"""Distillation of BioCLIP-2's species text space into BioLingual's audio encoder.

``loss`` holds the pure objectives (embeddings + teacher targets + labels -> losses);
the training loop, optimiser, checkpoints and DDP setup live in ``train``.
"""
