"""Beam runner plumbing shared by the jobs: options, runner choice, metrics."""
