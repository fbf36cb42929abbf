"""Code that runs Triton: starts ``tritonserver`` in a process group of its own, supervises and probes it
(``mobilesamv2-serve`` on a machine with the pip wheel, the container entrypoint in NVIDIA's image)."""
