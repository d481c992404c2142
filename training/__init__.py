"""mlplane.training: the runtime inside a TrainingJob's Ray job (checkpoints, MLflow, profile).

It imports only ``mlplane.monitoring`` so the training image needs no operator code.
"""
