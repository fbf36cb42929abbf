"""PyTorch modules of MobileSAMv2 and strict loaders for the official checkpoint files."""
