"""``kubetrade.workers``: the feed and executor processes.

``feed`` publishes closed candles from a source (``kubetrade.market.sources``) to JetStream and
the store; ``executor`` runs the trading core (``kubetrade.trading``) on signals and writes
orders, fills and equity. ``kubetrade worker feed|executor`` (``kubetrade.cli``) starts them, in a
pod or as a local process of ``kubetrade run``. They import the core and no other component.
"""
