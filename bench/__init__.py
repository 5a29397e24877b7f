"""modelloop's benchmarks: each prints a baseline and its own figure measured in the same run (`make bench`)."""
