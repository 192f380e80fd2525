"""The bottom layer: errors, device and precision, Ray start-up. Imports nothing else from augment."""
