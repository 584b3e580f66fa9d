"""Data: datasets, transforms, batches."""
