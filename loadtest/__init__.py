"""Locust load test of the segment_everything Triton model: ``locustfile.py`` and its headless runner
``run.py``."""
