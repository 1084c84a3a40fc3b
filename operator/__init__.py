"""``kubetrade.operator``: the kopf operator that turns ``TradingBot`` objects into workloads.

It reconciles each bot into the objects ``kubetrade.render`` builds (server-side apply), restores
drift, reflects the workers' heartbeats into ``status`` with conditions and events, sends control
commands from ``spec.paused`` and the kill-switch annotation, and runs the deletion finalizer.
``kubetrade operator`` (``kubetrade.cli``) starts it through ``main.run_operator``. It imports the
core (``kubetrade.*``) and no other component.
"""
