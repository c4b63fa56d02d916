"""Augmentations that sample their parameters, record them, and replay them exactly."""
