"""Live trading through ccxt: the exchange connection, the live broker, its journal and the
reconciliation that arms it.

Everything that talks to a real exchange lives here; the decisions it applies (order validation
from the exchange's markets, client order ids, the order state machine) are pure functions in
:mod:`kubetrade.trading`, shared with the paper broker.
"""
