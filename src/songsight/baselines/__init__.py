"""Baselines the distilled model is compared against; none of them trains the audio encoder.

``cascade`` chains the two models zero-shot through species names (audio -> BioLingual
species text -> BioCLIP-2 species text); ``text_mapping`` fits a map from BioLingual's
text space to BioCLIP-2's on paired prompt embeddings and applies it to audio embeddings.
"""
