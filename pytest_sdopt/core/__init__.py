"""The bottom layer: sdopt's errors, and safe file names and atomic writes; imports nothing of sdopt."""
