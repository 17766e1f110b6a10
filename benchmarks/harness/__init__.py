"""The shared benchmark harness: what every script in benchmarks/ measures with.

- `machine`: the load average beside every figure, the cpu share a timed pass got, the
  machine and library versions a report starts with.
- `timing`: interleaved rounds of several paths, best-of repeats, per-call latencies, the
  slope between two input counts, matmul peak and FLOP counts.
- `memory`: resident memory and its high-water mark from /proc, of this process or another.
- `models`: the exact BioLingual and BioCLIP-2 architectures at random init, saved in their
  real on-disk formats.
- `inputs`: WAVs and JPEGs on disk, rendered by the simulated world (`songsight.sim`).
- `report`: a work folder kept or removed, progress lines, JSON beside the printed report.

Scripts run as ``python benchmarks/NAME.py``, so ``benchmarks/`` is on ``sys.path`` and they
import ``harness`` directly.
"""
