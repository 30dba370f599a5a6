"""Datasets (registered adapters), batched augmentation."""
