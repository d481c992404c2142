"""mlplane.serving: the Ray Serve app (router, model deployments, feedback, drift tap).

It imports only ``mlplane.monitoring`` so the serving image needs no operator code.
"""
