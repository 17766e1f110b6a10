"""Quantised int8 weights built once per model and cached with their provenance.

Quantising a tower takes seconds at every load (benchmarks/README.md). The quantised module's
state dict is saved with ``torch.save`` beside a small JSON that says what it was built from:
the model's id, revision and a digest of its files, torch's version, the engine and scheme, and
the module's class. A later load whose provenance matches swaps every ``nn.Linear`` for an
empty quantised one and loads the saved state (``weights_only``: no pickled code runs); one
that does not match is rebuilt and says why in a log line, never used silently.

Where: ``int8/<key>/`` in songsight's cache (`songsight.config.cache_dir`), the key made from
the model's id and path, never inside the model folder: model folders are often
read-only or shared (a Hub snapshot, a lab's mount), copying one must not carry a build that
is specific to this machine's CPU kernels and torch version, and a folder's own files (its
revision) stay exactly as the user made them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

from songsight.config import cache_dir
from songsight.encoders.int8 import quantize_int8
from songsight.encoders.loading import ResolvedModel
from songsight.errors import SongsightError, one_line

log = logging.getLogger("songsight.int8")

FORMAT_VERSION = 2  # 2: attention unpacked into plain Linear layers before quantising


def weights_digest(folder: Path) -> str:
    """sha256 over every file in ``folder`` (not its subfolders): name, size, modification
    time and the first and last MiB. Cheap on GB files; a rewritten or replaced file differs."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = f.stat()  # follows the Hub cache's symlinks to their blobs
        h.update(f"{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if stat.st_size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def cache_dir_for(resolved: ResolvedModel, kind: str = "int8") -> Path:
    """The folder holding ``resolved``'s builds of ``kind`` (``int8``: quantised weights;
    ``onnx``: the fp32 exports of `songsight.encoders.ort_cache`; see the module docstring)."""
    # Not the revision: a model rewritten in place lands on its old entry, which is then found
    # stale and replaced, instead of leaving the old build behind under another key.
    key = hashlib.sha256(f"{resolved.model_id}\0{Path(resolved.path).resolve()}".encode())
    return cache_dir(kind, key.hexdigest()[:16])


def expected_provenance(module, resolved: ResolvedModel, part: str, scheme: dict | None = None) -> dict:  # fmt: skip
    """What a build of ``module`` (``part`` of ``resolved``) must have been made from;
    ``scheme`` names the engine and scheme (default: torch's dynamic int8, `quantization_scheme`)."""
    import torch

    from songsight.encoders.int8 import quantization_scheme

    return {
        "format_version": FORMAT_VERSION,
        "part": part,
        "module": f"{type(module).__module__}.{type(module).__qualname__}",
        **resolved.provenance(),
        "weights_digest": weights_digest(Path(resolved.path)),
        **(scheme if scheme is not None else quantization_scheme()),
        "torch": torch.__version__,
    }


def read_provenance(meta: Path) -> dict | None:
    """The saved provenance JSON, or None when missing or unreadable."""
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return None


def _swap_in_empty_quantised(module) -> None:
    """Replace every plain ``nn.Linear`` by an int8 dynamic one with zero weights, ready for
    ``load_state_dict`` (what ``quantize_dynamic`` builds, without computing the weights).
    The caller has unpacked the attention first, as `quantize_int8` does."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    for name, child in module.named_children():
        if type(child) is torch.nn.Linear:
            new = DynamicLinear(
                child.in_features, child.out_features, bias_=child.bias is not None,
                dtype=torch.qint8,
            )  # fmt: skip
            setattr(module, name, new)
        else:
            _swap_in_empty_quantised(child)


def _load_cached(module, weights: Path, info: dict):
    """``module`` with the cached int8 state, or None when the file cannot be read."""
    import torch

    from songsight.encoders.int8 import select_engine

    try:
        with warnings.catch_warnings():
            # Quantised tensors are still saved through TypedStorage, which torch marks
            # deprecated; the load is exact (tests/test_int8_cache.py).
            warnings.filterwarnings("ignore", message=".*TypedStorage.*", category=UserWarning)
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or corrupt: rebuilt by the caller
        log.warning("int8 cache %s unreadable (%s); quantising again", weights, exc)
        return None
    select_engine()
    from songsight.encoders.attention import unpack_attention

    n_attention = unpack_attention(module)
    # Counted as quantize_int8 counts them (subclasses too), so the info is the same.
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    _swap_in_empty_quantised(module)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # provenance matched, so the file was altered by hand
        raise SongsightError(
            f"int8 cache {weights} does not fit its model ({one_line(exc)}); delete "
            f"{weights.parent} and run again"
        ) from None
    return module, {**info, "linear_layers": n_linear, "attention_unpacked": n_attention}


def write_atomically(folder: Path, name: str, write) -> None:
    """``write(path)`` to a temporary file in ``folder``, then rename it to ``name``: a reader
    never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}", suffix=Path(name).suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, folder / name)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_build(folder: Path, stem: str, suffix: str, write, provenance: dict) -> None:
    """``write(path)`` the build to ``stem + suffix``, then the JSON that makes it valid
    (``stem.json``); each written whole then renamed, so a crash leaves no JSON pointing at a
    bad build."""
    write_atomically(folder, f"{stem}{suffix}", write)
    write_atomically(folder, f"{stem}.json", lambda path: Path(path).write_text(json.dumps(provenance, indent=1)))  # fmt: skip


def _torch_save(module, path) -> None:
    import torch

    torch.save(module.state_dict(), path)


def mismatch(saved: dict | None, want: dict) -> str:
    if saved is None:
        return "no readable provenance"
    keys = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    return ", ".join(f"{k} {saved.get(k)!r} -> {want.get(k)!r}" for k in keys)


def load_or_quantize_int8(module, resolved: ResolvedModel, part: str):
    """``module`` quantised int8 as `quantize_int8` does (in place, also returned with its
    info), read from the cache when its provenance matches, else quantised and cached.

    ``part`` names what ``module`` is (``"clap"``, ``"open_clip_visual"``): one model folder may
    hold several. The info returned is the same either way, so stores do not tell cached from
    fresh quantisations apart.
    """
    folder = cache_dir_for(resolved)
    want = expected_provenance(module, resolved, part)
    weights, meta = folder / f"{part}.pt", folder / f"{part}.json"
    saved = None
    if meta.is_file():
        saved = read_provenance(meta)
        if saved == want and weights.is_file():
            info = {"scheme": want["scheme"], "engine": want["engine"]}
            info["torch"] = want["torch"].split("+")[0]
            loaded = _load_cached(module, weights, info)
            if loaded is not None:
                return loaded
        else:
            log.warning(
                "int8 cache %s is stale (%s); quantising again", meta, mismatch(saved, want)
            )
    module, info = quantize_int8(module)
    try:
        meta.unlink(missing_ok=True)  # stale provenance must not outlive the weights it named
        folder.mkdir(parents=True, exist_ok=True)
        save_build(folder, part, ".pt", lambda path: _torch_save(module, path), want)
    except OSError as exc:  # a full disk must not stop the job: it only loses the cache
        log.warning("int8 cache: could not write %s (%s); not cached", folder, exc)
    return module, info
