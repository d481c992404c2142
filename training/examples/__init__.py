"""Runnable examples of the training runtime, on generated data (no downloads).

- :mod:`mlplane.training.examples.sklearn_tabular`: a churn classifier trained in steps with
  ``partial_fit``, checkpointed through :class:`mlplane.training.TrainingSession`, run as one
  Ray task (retried on node loss) when started inside a Ray job.
- :mod:`mlplane.training.examples.torch_mlp`: a PyTorch MLP trained data-parallel with Ray
  Train's ``TorchTrainer``; Ray Train restores it from its newest checkpoint after a worker loss
  and in the next attempt.
"""
