"""Checking a run: the gates, the speed and promise verdicts, SSIM, the baseline store, and one
check of a run against what is stored and the limits."""
