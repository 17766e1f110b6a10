"""Datasets as manifests: which files, which species label, which split; nothing about models.

- `songsight.data.manifest`: the one manifest format (``path``, ``label``, optional ``split``,
  ``start_s``, ``end_s``, extra columns kept), its validation, saving and content hash;
  `songsight.data.cells` reads its cells (blanks, numbers, the canonical text hashed).
- `songsight.data.ssw60`: an extracted SSW60 folder -> species list and audio / image manifests.
- `songsight.data.download`: resumable, md5-checked download and safe extraction of SSW60.
"""
