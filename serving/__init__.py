"""mlplane.serving: the Ray Serve app (router, model deployments, feedback, drift tap).

``mlplane.serving.app:build_app`` is the application KubeRay (``serveConfigV2``) and the local
platform (:mod:`.deploy`) deploy. Modules:

- :mod:`.app` — the Serve deployments ``router``, ``model-<i>``, ``monitor`` (thin, Ray);
- :mod:`.router`, :mod:`.model`, :mod:`.monitor` — what those deployments do, testable without
  Ray;
- :mod:`.config` — the args / user_config contract (what restarts replicas, what does not);
- :mod:`.bucketing` — sticky weighted assignment (rendezvous hashing);
- :mod:`.request_id` — signed request ids carrying the serving variant;
- :mod:`.feedback` — feedback bodies and exactly-once acceptance;
- :mod:`.inputs` — JSON payloads and signature checks;
- :mod:`.stats`, :mod:`.metrics` — per-variant totals, Prometheus exposition;
- :mod:`.drift_tap` — live sketches against the training reference;
- :mod:`.deploy` — the Serve REST API calls the local platform makes.

It imports only ``mlplane.monitoring`` of mlplane, so the serving image needs no operator code.
"""
