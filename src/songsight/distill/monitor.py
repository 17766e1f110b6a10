"""What the distillation trainer reports: per-epoch validation and the metrics CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from songsight.audio import window_bounds
from songsight.distill.data import AudioCrops
from songsight.encoders.base import l2_normalize

METRICS_FILE = "metrics.csv"


class Validator:
    """Zero-shot top-1 of validation clips against every species' teacher text (seen and
    held-out species apart when both occur), and audio-to-image mAP when a gallery is given.

    ``targets``: (S, D) teacher text embeddings on ``device``, row ``by_label[label]``;
    ``gallery``: ((G, D) image embeddings, (G,) labels) or None. A clip's embedding is the
    normalised mean of its unit window embeddings (windows of ``window_s``, half overlap), as
    the encoder computes it at inference.
    """

    def __init__(
        self, val_df, features, window_s: float, targets, by_label: dict, train_labels,
        gallery, device: str, autocast,
    ):  # fmt: skip
        self.crops = AudioCrops(
            list(val_df["path"]), list(val_df["label"]), features.sample_rate_hz, window_s, True
        )
        self.labels = val_df["label"].to_numpy()
        self.features, self.window_s = features, window_s
        self.targets, self.by_label, self.train_labels = targets, by_label, train_labels
        self.gallery, self.device, self.autocast = gallery, device, autocast

    def __call__(self, student) -> dict:
        """Metrics of ``student`` (already in eval mode) on the validation clips."""
        import torch

        from songsight.eval.metrics import mean_average_precision, topk_accuracy

        sr, embs = self.features.sample_rate_hz, []
        with torch.inference_mode():
            for i in range(len(self.crops)):
                wave = self.crops.waveform(i)
                bounds = window_bounds(len(wave), sr, self.window_s, self.window_s / 2)
                wins = [wave[a:b] for a, b in bounds]
                with torch.autocast(
                    self.device.split(":")[0],
                    dtype=self.autocast,
                    enabled=self.autocast is not None,
                ):
                    e, _ = student(self.features(wins, self.device))
                embs.append(l2_normalize(l2_normalize(e.float()).mean(0, keepdim=True)))
        emb = torch.cat(embs)
        labels = self.labels
        idx = np.array([self.by_label[int(x)] for x in labels])
        scores = (emb @ self.targets.T).cpu().numpy()
        res = {"val_zero_shot_top1": topk_accuracy(scores, idx, 1)}
        seen = np.isin(labels, self.train_labels)
        if seen.any() and not seen.all():
            res["val_zero_shot_top1_seen"] = topk_accuracy(scores[seen], idx[seen], 1)
            res["val_zero_shot_top1_heldout"] = topk_accuracy(scores[~seen], idx[~seen], 1)
        if self.gallery is not None:
            res["val_map"] = mean_average_precision(
                emb.cpu().numpy() @ self.gallery[0].T, labels, self.gallery[1]
            )
        return res


class MetricsLog:
    """metrics.csv: one row per optimiser step and one per validation, appended as they come."""

    COLUMNS = (
        "step",
        "epoch",
        "total",
        "contrastive",
        "preserve",
        "logit_scale",
        "lr",
        "items_per_s",
        "val_zero_shot_top1",
        "val_zero_shot_top1_seen",
        "val_zero_shot_top1_heldout",
        "val_map",
    )

    def __init__(self, path: Path, keep_until_step: int):
        kept = []
        if keep_until_step >= 0 and path.is_file():  # a resumed run drops rows past its checkpoint
            with path.open(newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_until_step]
        self._fh = path.open("w", newline="")
        self._w = csv.DictWriter(self._fh, fieldnames=self.COLUMNS, extrasaction="ignore")
        self._w.writeheader()
        self._w.writerows(kept)
        self._fh.flush()

    def write(self, row: dict) -> None:
        self._w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._fh.flush()
