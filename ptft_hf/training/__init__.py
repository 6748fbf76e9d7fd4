"""Training: the Trainer subclass, evaluation metrics, callbacks and the run report."""
