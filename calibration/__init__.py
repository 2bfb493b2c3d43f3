"""Calibration recipes as data: default text split, token counts and search presets, picked by name."""
