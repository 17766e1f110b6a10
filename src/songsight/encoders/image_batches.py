"""The one batching loop over photos, for every image encoder whatever runs its model.

Photos are decoded and preprocessed a batch ahead of the model (at most two batches in flight
per worker, so a million paths cost a few batches of pixels, not a million); each photo's
embedding or `InputFileError` is yielded in input order. Two ways:

- threads (``decode_threads``; the default, and always on a CPU, where the model needs the
  cores and PIL's decode and resize release the GIL);
- worker processes (``prep_workers`` > 0, the default on a GPU): torch's ``DataLoader`` hands
  each batch over in shared memory, pinned when the model is on CUDA so the copy to the device
  is asynchronous. On an H200 the image job reached 249 photos/s in bf16, 5.5% of the
  device's bf16 roofline, with photos prepared by two threads (benchmarks/README.md): the host
  was the limit. Not yet measured with workers (no GPU since).
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
    implements ``_pixel_transform()`` (a picklable callable: PIL RGB image -> (3, H, W)
    pixels) and ``_encode(pixels) -> (B, D) float32 unit norm`` (a list of pixels, or from
    worker processes one stacked tensor).
    """

    name = "bioclip"
    prep_workers = 0  # worker processes preparing pixels; 0: threads
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
        return prepare_photo(source, self._pixel_transform())

    def iter_images(self, sources: Sequence) -> Iterator[tuple[int, np.ndarray | InputFileError]]:
        """Yield ``(index, (D,) embedding)`` or ``(index, InputFileError)`` in order.

        Decoding and preprocessing of the next batch run in threads (or ``prep_workers``
        processes) while the model works.
        """
        if self.prep_workers > 0:
            yield from self._iter_in_processes(list(sources))
            return

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

    def _iter_in_processes(self, sources: list):
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _Photos(sources, self._pixel_transform()),
            batch_size=self.batch_size,
            num_workers=self.prep_workers,
            collate_fn=_collate,
            pin_memory=str(getattr(self, "device", "cpu")).startswith("cuda"),
            prefetch_factor=2,
        )
        for items, pixels, errors in loader:
            out = self._encode(pixels) if items else None
            emb = {j: out[k] for k, j in enumerate(items)}
            failed = {j: InputFileError(path, reason) for j, path, reason in errors}
            for j in sorted([*emb, *failed]):
                yield j, emb[j] if j in emb else failed[j]


def prepare_photo(source, transform):
    """A path or PIL image -> ``transform``'s pixels; `InputFileError` for an unusable file."""
    img = to_rgb(source) if not isinstance(source, (str, Path)) else load_image(source)
    return transform(img)


class _Photos:
    """A map-style dataset for torch's DataLoader: picklable (sources and the transform, never
    the encoder and its model), errors returned as data so one bad file never kills a worker."""

    def __init__(self, sources: list, transform):
        self.sources, self.transform = sources, transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, j: int):
        try:
            return j, prepare_photo(self.sources[j], self.transform), None
        except InputFileError as exc:
            return j, None, (exc.path, exc.reason)


def _collate(items):
    """(indices of good photos, their stacked pixels as a tensor or None, [(index, path, reason)])."""
    import torch

    good = [(j, torch.as_tensor(t)) for j, t, err in items if err is None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [j for j, _ in good], pixels, [(j, *err) for j, _, err in items if err is not None]
