"""The one batching loop over photos, for every image encoder whatever runs its model.

Photos are decoded and preprocessed in ``decode_threads`` threads, a batch ahead of the model
(at most two batches in flight, so a million paths cost two batches of pixels, not a million);
each photo's embedding or `InputFileError` is yielded in input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from songsight.errors import InputFileError
from songsight.inputs.images import load_image, to_rgb


class BatchedImageEncoder:
    """What every BioCLIP-2 image encoder shares, whatever runs its model: the batching loop
    and the provenance of a store's rows.

    A subclass sets ``batch_size``, ``decode_threads``, ``dim``, ``resolved``, ``precision``,
    ``preprocess`` and ``preprocess_cfg`` (open_clip's ``PreprocessCfg`` or its dict) and
    implements ``_transform(PIL image) -> (3, H, W) pixels`` and ``_encode(list of pixels) ->
    (B, D) float32 unit norm``.
    """

    name = "bioclip"
    quantization: dict | None = None  # set for int8
    runtime: dict | None = None  # set by encoders not run by torch (ONNX Runtime)

    def provenance(self) -> dict:
        from dataclasses import asdict, is_dataclass

        cfg = self.preprocess_cfg
        return {
            "encoder": self.name,
            "kind": "image",
            **self.resolved.provenance(),
            "dim": self.dim,
            "precision": self.precision,
            **({"quantization": self.quantization} if self.quantization else {}),
            **({"runtime": self.runtime} if self.runtime else {}),
            "preprocessing": {
                **(asdict(cfg) if is_dataclass(cfg) else cfg),
                "choice": self.preprocess,
            },
        }

    def _prepare(self, source):
        img = to_rgb(source) if not isinstance(source, (str, Path)) else load_image(source)
        return self._transform(img)

    def iter_images(self, sources: Sequence) -> Iterator[tuple[int, np.ndarray | InputFileError]]:
        """Yield ``(index, (D,) embedding)`` or ``(index, InputFileError)`` in order.

        Decoding and preprocessing of the next batch run in threads while the model works.
        """

        def prep_batch(start: int):
            items = []
            for j in range(start, min(start + self.batch_size, len(sources))):
                try:
                    items.append((j, self._prepare(sources[j])))
                except InputFileError as exc:
                    items.append((j, exc))
            return items

        starts = range(0, len(sources), self.batch_size)
        with ThreadPoolExecutor(max_workers=max(1, self.decode_threads)) as pool:
            # map() would queue every batch at once; keep at most two batches in flight.
            futures = [pool.submit(prep_batch, s) for s in list(starts)[:2]]
            for b, _ in enumerate(starts):
                items = futures[b].result()
                futures[b] = None
                if b + 2 < len(starts):
                    futures.append(pool.submit(prep_batch, starts[b + 2]))
                good = [(j, t) for j, t in items if not isinstance(t, InputFileError)]
                emb = {}
                if good:
                    out = self._encode([t for _, t in good])
                    emb = {j: out[k] for k, (j, _) in enumerate(good)}
                for j, t in items:
                    yield j, (t if isinstance(t, InputFileError) else emb[j])

    def embed_images(self, sources: Sequence) -> np.ndarray:
        """(N, D) float32 unit norm from paths or PIL images; raises on the first bad file."""
        out = []
        for _, res in self.iter_images(list(sources)):
            if isinstance(res, InputFileError):
                raise res
            out.append(res)
        return np.stack(out) if out else np.zeros((0, self.dim), np.float32)
