"""Measuring a run: the runner and its clocks, memory trackers, the machine's reference workload,
speed figures, settling, interleaving with the reference, devices, isolation and cleanup."""
