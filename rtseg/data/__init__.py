"""Datasets (folder layouts of the seeds' datasets), splits and transforms."""
