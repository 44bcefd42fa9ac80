"""Synthetic echo studies with ground truth: no real patient data is used anywhere."""
