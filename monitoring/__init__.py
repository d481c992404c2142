"""mlplane.monitoring: statistics (drift, sequential tests) and generators (rules, dashboards).

The ground floor: it imports nothing else of mlplane, so every other part may use it.
"""
