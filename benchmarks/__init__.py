"""Side-by-side benchmarks of ptft_hf against plain-transformers baselines (not part of the wheel).

`python -m benchmarks.run` runs every workload, each arm in its own process; see README.md.
"""
