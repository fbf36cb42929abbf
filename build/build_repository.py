"""Thin entry point; the logic lives in `mobilesamv2.export.cli` (importable, tested).
Run: python build/build_repository.py --help"""

import sys

from mobilesamv2.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
