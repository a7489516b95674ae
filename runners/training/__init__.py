"""Accuracy runs: the LightningModule around the skeleton, the Trainer, and training throughput."""
