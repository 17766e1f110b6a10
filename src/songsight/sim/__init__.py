"""The offline simulated world: a species tree with traits, rendered photos, calls and captions.

No machine here can download BioLingual, BioCLIP-2 or SSW60, so the world stands in for them:
`world.build_world` draws species (orders, families, genera) with visual and acoustic traits,
`photos.render_photo` and `calls.render_call` render them, `captions` writes TreeOfLife-like
photo captions and AnimalSpeak-like call captions, and `export.export_world` writes everything
in SSW60's published layout plus caption sets for pretraining small stand-in models.

Image and sound share only species identity and taxonomy: visual and acoustic traits come from
separate random streams, so a visual knob never changes a rendered sound and vice versa.
"""
