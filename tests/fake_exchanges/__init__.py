"""Local fake exchanges speaking each exchange's wire format, for offline tests of live trading.

The real ccxt client (signing, parameter names, error mapping) talks to them on 127.0.0.1,
redirected with :func:`kubetrade.market.exchange.point_at`.
"""
