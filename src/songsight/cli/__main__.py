"""``python -m songsight.cli`` (and ``torchrun -m songsight.cli``) run the console script."""

from songsight.cli import main

raise SystemExit(main())
