"""Thin entry point; the logic lives in `mobilesamv2.weights` (importable, tested).
Run: python build/download_weights.py --help"""

import sys

from mobilesamv2.weights import main

if __name__ == "__main__":
    sys.exit(main())
