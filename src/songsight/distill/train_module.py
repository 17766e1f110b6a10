"""The one module distillation trains: the student and the temperature together.

Its own module (torch at import) so that `songsight.distill.models` can build it and
`songsight.distill.loop` can run it without either importing the other.
"""

from __future__ import annotations

import torch


class TrainModule(torch.nn.Module):
    """The student and the temperature as one module, so that DDP syncs both.

    ``forward(feats)``: (head output (B, D), base embedding (B, d), logit scale, the head's
    species logits (B, S) for a head that scores species, else None), unnormalised.
    """

    def __init__(self, student: torch.nn.Module, logit_scale: torch.nn.Module):
        super().__init__()
        self.student = student
        self.logit_scale = logit_scale

    def forward(self, feats):
        emb, base = self.student(feats)
        head = self.student.head
        logits = head.species_logits(base) if hasattr(head, "species_logits") else None
        return emb, base, self.logit_scale(), logits
