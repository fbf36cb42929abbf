"""Thin entry point; the logic lives in `mobilesamv2.fake_checkpoints` (importable, tested).
Run: python build/make_test_checkpoints.py --help"""

import sys

from mobilesamv2.fake_checkpoints import main

if __name__ == "__main__":
    sys.exit(main())
