"""A fake Binance spot REST API (aiohttp on 127.0.0.1, port 0) for offline tests of live trading.

It speaks the wire format of Binance's spot API v3 as documented by Binance (and as ccxt's own
recorded payloads show it): ``exchangeInfo`` with PRICE_FILTER / LOT_SIZE / MARKET_LOT_SIZE /
NOTIONAL filters, HMAC-SHA256 signed requests (``timestamp``, ``recvWindow``, ``signature`` over
the query string followed by the form body, key in ``X-MBX-APIKEY``), orders with
``newClientOrderId`` and ``newOrderRespType`` ACK / RESULT / FULL, ``openOrders``, ``allOrders``,
``myTrades``, ``account`` and ``ticker/24hr``, errors as ``{"code": -NNNN, "msg": ...}``, and the
``X-MBX-USED-WEIGHT-1M`` header on every answer.

What a test controls:

- ``balances`` (free amounts per asset; limit orders lock what they may spend);
- ``prices`` (the price market orders fill at, and each symbol's ticker);
- ``fee_asset``: None, fees in the asset received (Binance's default); ``"BNB"``, fees in BNB
  at ``prices["BNB<quote>"]`` while the account holds enough BNB (Binance's "pay fees with
  BNB"), else in the asset received;
- ``fill_script``: how each new order fills, consumed in order, then ``default_fill``:
  ``"full"`` (at once), ``"partial"`` (``partial_fraction`` of it at once, the rest open until
  :meth:`FakeBinance.fill`), ``"never"`` (rests open; a market order expires unfilled, and so
  does the rest of a partially filled one unless ``markets_rest`` keeps it working, as a thin
  book would);
- ``faults``: answers injected instead of the next matching request: HTTP 429 / 418 (rate
  limit, ban), 503, or ``Fault.timeout`` which stores the order and then answers too late;
- ``weight_limit``: request weight per window (``weight_window_s``, a minute as Binance counts
  it) above which requests get 429 (-1003); ``X-MBX-USED-WEIGHT-1M`` reports the window's use.

Every request is recorded in ``requests`` (method, path, parameters, API key).

Candles: ``klines`` (rows ``[open time, open, high, low, close, volume]``) answer
``GET /api/v3/klines`` (``startTime``, ``endTime``, ``limit``); the market streams at
``/ws/<n>`` accept a ``SUBSCRIBE`` and then play the next script of ``ws_sessions``, one per
connection: kline events (:func:`kline_event`) sent in order, ending with :data:`DROP` (the
server closes the connection) or not (the last event is sent again every ``ws_repeat_s``, as
Binance repeats the open candle; an empty script stays silent). ``ws_connections`` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal
from urllib.parse import parse_qsl

from aiohttp import web

FillKind = Literal["full", "partial", "never"]
# A step of a WebSocket session script: the server closes the connection here.
DROP = "drop"

OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")
DEFAULT_RECV_WINDOW_MS = 5_000
# Request weights of the endpoints emulated, as Binance documents them for spot API v3.
WEIGHTS = {
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("GET", "/api/v3/time"): 1,
    ("GET", "/api/v3/ping"): 1,
    ("POST", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4,
    ("DELETE", "/api/v3/order"): 1,
    ("GET", "/api/v3/openOrders"): 6,
    ("GET", "/api/v3/allOrders"): 20,
    ("GET", "/api/v3/myTrades"): 20,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/ticker/24hr"): 2,
}


@dataclass(frozen=True)
class SymbolRules:
    """One spot market as exchangeInfo describes it."""

    symbol: str
    base: str
    quote: str
    tick_size: str = "0.01"
    step_size: str = "0.00001"
    min_qty: str = "0.00001"
    max_qty: str = "9000"
    min_notional: str = "5"
    order_types: tuple[str, ...] = ("LIMIT", "LIMIT_MAKER", "MARKET")


@dataclass(frozen=True)
class Fault:
    """An injected answer for the next request whose path starts with ``path``.

    ``status`` with ``code``/``msg`` answers that error as JSON (``code`` None: ``msg`` as a
    plain-text body, as a load balancer's 503 is). ``timeout`` processes the request normally
    and then waits ``delay_s`` before answering, so a client with a shorter timeout gives up
    although the order exists. ``lost`` holds the request ``delay_s`` before carrying it out and
    drops it if the client went away meanwhile: a request that never reached the exchange.
    """

    path: str = "/api/v3/order"
    method: str = "POST"
    status: int = 429
    code: int | None = -1003
    msg: str = "Too many requests; current limit is 6000 request weight per 1 MINUTE."
    timeout: bool = False
    delay_s: float = 2.0
    lost: bool = False

    @classmethod
    def rate_limited(cls, **kw: Any) -> Fault:
        """HTTP 429: too much request weight."""
        return cls(status=429, **kw)

    @classmethod
    def banned(cls, **kw: Any) -> Fault:
        """HTTP 418: the IP is banned for repeated 429s."""
        return cls(status=418, msg="Way too many requests; IP banned until later.", **kw)

    @classmethod
    def unavailable(cls, **kw: Any) -> Fault:
        """HTTP 503 with a plain-text body."""
        return cls(status=503, code=None, msg="Service Unavailable", **kw)

    @classmethod
    def late(cls, delay_s: float = 2.0, **kw: Any) -> Fault:
        """The request is carried out but answered after ``delay_s``."""
        return cls(timeout=True, status=200, code=None, msg="", delay_s=delay_s, **kw)

    @classmethod
    def in_transit(cls, delay_s: float = 5.0, **kw: Any) -> Fault:
        """The request is held ``delay_s``; carried out only if the client still waits."""
        return cls(lost=True, status=200, code=None, msg="", delay_s=delay_s, **kw)


def _dec(value: str | Decimal | float) -> Decimal:
    return Decimal(str(value))


def _fmt(value: Decimal) -> str:
    return f"{value:.8f}"


def _steps(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


@dataclass
class FakeBinance:
    """The fake's state and its aiohttp server; ``await start()`` returns the base URL."""

    api_key: str = "fake-binance-key"
    secret: str = "fake-binance-secret"
    symbols: tuple[SymbolRules, ...] = (
        SymbolRules("BTCUSDT", "BTC", "USDT"),
        SymbolRules("ETHUSDT", "ETH", "USDT", step_size="0.0001", min_qty="0.0001"),
    )
    balances: dict[str, Decimal] = field(
        default_factory=lambda: {"USDT": Decimal("10000"), "BTC": Decimal(0), "ETH": Decimal(0)}
    )
    prices: dict[str, Decimal] = field(
        default_factory=lambda: {"BTCUSDT": Decimal("60000"), "ETHUSDT": Decimal("3000")}
    )
    fee_rate: Decimal = Decimal("0.001")
    fee_asset: str | None = None
    default_fill: FillKind = "full"
    partial_fraction: Decimal = Decimal("0.5")
    weight_limit: int | None = None
    weight_window_s: int = 60
    markets_rest: bool = False
    fill_script: deque[FillKind] = field(default_factory=deque)
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    trades: list[dict[str, Any]] = field(default_factory=list)
    locked: dict[str, Decimal] = field(default_factory=dict)
    rate_limited: int = 0
    klines: list[list[Any]] = field(default_factory=list)
    ws_sessions: deque[list[dict[str, Any] | str]] = field(default_factory=deque)
    ws_connections: int = 0
    ws_repeat_s: float = 0.05

    def __post_init__(self) -> None:
        self._order_ids = itertools.count(1_000_001)
        self._trade_ids = itertools.count(5_000_001)
        self._rules = {s.symbol: s for s in self.symbols}
        self._weight_minute = 0
        self._weight_used = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve on 127.0.0.1 on a free port; the base URL (``http://127.0.0.1:PORT``)."""
        app = web.Application()
        app.router.add_get("/ws/{stream}", self._websocket)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what tests read and drive ------------------------------------------------------------

    def order_by_client_id(self, client_order_id: str) -> dict[str, Any] | None:
        """The newest order with this client id, if any."""
        found = [o for o in self.orders.values() if o["clientOrderId"] == client_order_id]
        return found[-1] if found else None

    def open_orders(self) -> list[dict[str, Any]]:
        """Orders still working."""
        return [o for o in self.orders.values() if o["status"] in OPEN_STATUSES]

    def fill(self, client_order_id: str, quantity: Decimal | None = None) -> None:
        """Fill ``quantity`` (default: all that remains) of an open order at its price."""
        order = self.order_by_client_id(client_order_id)
        if order is None or order["status"] not in OPEN_STATUSES:
            raise KeyError(f"no open order {client_order_id}")
        remaining = _dec(order["origQty"]) - _dec(order["executedQty"])
        qty = remaining if quantity is None else min(quantity, remaining)
        price = _dec(order["price"]) if order["type"] != "MARKET" else self.prices[order["symbol"]]
        self._execute(order, qty, price)

    def place(
        self, symbol: str, side: str, quantity: str, price: str, client_order_id: str
    ) -> dict[str, Any]:
        """An order placed on the account by someone else (e.g. by hand on the website)."""
        rules = self._rules[symbol]
        params = {
            "symbol": symbol,
            "side": side,
            "type": "LIMIT",
            "quantity": quantity,
            "price": price,
            "timeInForce": "GTC",
            "newClientOrderId": client_order_id,
        }
        self.fill_script.appendleft("never")
        answer = self._create(rules, params, int(time.time() * 1000))
        if isinstance(answer, web.Response):
            raise ValueError(f"the fake refused the order: {answer.text}")
        return answer

    # -- market streams -----------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws_connections += 1
        script = self.ws_sessions.popleft() if self.ws_sessions else []
        subscribe = await ws.receive_json(timeout=5)
        await ws.send_json({"result": None, "id": subscribe["id"]})
        for step in script:
            if step == DROP:
                await ws.close()
                return ws
            await ws.send_json(step)
            await asyncio.sleep(0.005)
        # Binance pushes the open candle again and again; so does the fake with the last event
        # until the client leaves (a session without events stays silent).
        while not ws.closed and script:
            await ws.send_json(script[-1])
            with contextlib.suppress(TimeoutError):
                await ws.receive(timeout=self.ws_repeat_s)
        async for _ in ws:
            pass
        return ws

    def _klines(self, params: dict[str, str]) -> list[list[Any]]:
        start = int(params.get("startTime", 0))
        end = int(params.get("endTime", 2**63))
        rows = [r for r in self.klines if start <= r[0] <= end]
        limit = int(params.get("limit", 500))
        rows = rows[:limit] if "startTime" in params else rows[-limit:]
        step = int(rows[1][0] - rows[0][0]) if len(rows) > 1 else 60_000
        # Binance's row: open time, OHLCV as strings, close time, quote volume, trades, taker
        # buy base and quote volumes, an ignored field.
        return [
            [r[0], *(_fmt(_dec(v)) for v in r[1:6]), r[0] + step - 1, "0", 1, "0", "0", "0"]
            for r in rows
        ]

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        query = request.query_string
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        key = (request.method, request.path)
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "params": params,
                "api_key": request.headers.get("X-MBX-APIKEY"),
            }
        )
        weight = WEIGHTS.get(key, 1)
        fault = self._take_fault(request.method, request.path)
        if fault is not None and fault.lost:
            await asyncio.sleep(fault.delay_s)
            transport = request.transport
            if transport is None or transport.is_closing():
                return web.Response(status=499, text="client closed the connection")
            fault = None
        if fault is not None and not fault.timeout:
            if fault.status in (418, 429):
                self.rate_limited += 1
            if fault.code is None:
                return web.Response(status=fault.status, text=fault.msg)
            return _error(fault.status, fault.code, fault.msg)
        if self._over_weight(weight):
            self.rate_limited += 1
            return _error(
                429, -1003, f"Too much request weight used; current limit is {self.weight_limit}"
            )
        answer = self._route(request.method, request.path, query, body, params)
        if fault is not None:  # a timeout: the work is done, the answer comes too late
            await asyncio.sleep(fault.delay_s)
        answer.headers["X-MBX-USED-WEIGHT-1M"] = str(self._weight_used)
        return answer

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and path.startswith(fault.path):
                self.faults.remove(fault)
                return fault
        return None

    def _over_weight(self, weight: int) -> bool:
        minute = int(time.time() // self.weight_window_s)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0
        self._weight_used += weight
        return self.weight_limit is not None and self._weight_used > self.weight_limit

    def _route(
        self, method: str, path: str, query: str, body: str, params: dict[str, str]
    ) -> web.Response:
        now = int(time.time() * 1000)
        if (method, path) == ("GET", "/api/v3/exchangeInfo"):
            return web.json_response(self._exchange_info(now))
        if (method, path) == ("GET", "/api/v3/time"):
            return web.json_response({"serverTime": now})
        if (method, path) == ("GET", "/api/v3/ping"):
            return web.json_response({})
        if (method, path) == ("GET", "/api/v3/klines"):
            return web.json_response(self._klines(params))
        if (method, path) == ("GET", "/api/v3/ticker/24hr"):
            ticker = self._ticker(params.get("symbol", ""), now)
            if ticker is None:
                return _error(400, -1121, "Invalid symbol.")
            return web.json_response(ticker)
        refusal = self._authenticate(method, path, query, body, params, now)
        if refusal is not None:
            return refusal
        if path == "/api/v3/order":
            if method == "POST":
                rules = self._rules.get(params.get("symbol", ""))
                if rules is None:
                    return _error(400, -1121, "Invalid symbol.")
                created = self._create(rules, params, now)
                if isinstance(created, web.Response):
                    return created
                return web.json_response(self._order_answer(created, params))
            order = self._find(params)
            if order is None:
                if method == "GET":
                    return _error(400, -2013, "Order does not exist.")
                return _error(400, -2011, "Unknown order sent.")
            if method == "DELETE":
                if order["status"] not in OPEN_STATUSES:
                    return _error(400, -2011, "Unknown order sent.")
                self._close(order, "CANCELED", now)
            return web.json_response(self._public(order))
        if (method, path) == ("GET", "/api/v3/openOrders"):
            symbol = params.get("symbol")
            return web.json_response(
                [self._public(o) for o in self.open_orders() if symbol in (None, o["symbol"])]
            )
        if (method, path) == ("GET", "/api/v3/allOrders"):
            symbol = params.get("symbol")
            return web.json_response(
                [self._public(o) for o in self.orders.values() if o["symbol"] == symbol]
            )
        if (method, path) == ("GET", "/api/v3/myTrades"):
            return web.json_response(self._my_trades(params))
        if (method, path) == ("GET", "/api/v3/account"):
            return web.json_response(self._account(now))
        return _error(404, -1, f"not emulated by the fake: {method} {path}")

    def _authenticate(
        self,
        method: str,
        path: str,
        query: str,
        body: str,
        params: dict[str, str],
        now: int,
    ) -> web.Response | None:
        del method, path
        total = query + body  # Binance signs the query string followed by the body
        if "signature=" not in total:
            return _error(400, -1102, "Mandatory parameter 'signature' was not sent.")
        unsigned, _, signature = total.rpartition("signature=")
        unsigned = unsigned.rstrip("&")
        expected = hmac.new(self.secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            return _error(400, -1022, "Signature for this request is not valid.")
        timestamp = int(params.get("timestamp", "0"))
        window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
        if not (timestamp - 1_000 <= now <= timestamp + window):
            return _error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        return None

    # -- orders -------------------------------------------------------------------------------

    def _create(
        self, rules: SymbolRules, params: dict[str, str], now: int
    ) -> dict[str, Any] | web.Response:
        kind = params.get("type", "")
        side = params.get("side", "")
        if kind not in rules.order_types:
            return _error(400, -1116, "Invalid orderType.")
        if side not in ("BUY", "SELL"):
            return _error(400, -1117, "Invalid side.")
        client_id = params.get("newClientOrderId") or f"fake{next(self._order_ids)}"
        previous = self.order_by_client_id(client_id)
        if previous is not None and previous["status"] in OPEN_STATUSES:
            return _error(400, -2010, "Duplicate order sent.")
        if "quantity" not in params:
            return _error(400, -1102, "Mandatory parameter 'quantity' was not sent.")
        qty = _dec(params["quantity"])
        if qty < _dec(rules.min_qty) or qty > _dec(rules.max_qty):
            return _error(400, -1013, "Filter failure: LOT_SIZE")
        if _steps(qty, _dec(rules.step_size)) != qty:
            return _error(400, -1013, "Filter failure: LOT_SIZE")
        if kind == "MARKET":
            price = self.prices[rules.symbol]
        else:
            if "price" not in params:
                return _error(400, -1102, "Mandatory parameter 'price' was not sent.")
            price = _dec(params["price"])
            if _steps(price, _dec(rules.tick_size)) != price:
                return _error(400, -1013, "Filter failure: PRICE_FILTER")
        if qty * price < _dec(rules.min_notional):
            return _error(400, -1013, "Filter failure: NOTIONAL")
        spend_asset, spend = (rules.quote, qty * price) if side == "BUY" else (rules.base, qty)
        if self.balances.get(spend_asset, Decimal(0)) < spend:
            return _error(400, -2010, "Account has insufficient balance for requested action.")
        order: dict[str, Any] = {
            "symbol": rules.symbol,
            "orderId": next(self._order_ids),
            "orderListId": -1,
            "clientOrderId": client_id,
            "transactTime": now,
            "price": _fmt(price if kind != "MARKET" else Decimal(0)),
            "origQty": _fmt(qty),
            "executedQty": _fmt(Decimal(0)),
            "cummulativeQuoteQty": _fmt(Decimal(0)),
            "status": "NEW",
            "timeInForce": params.get("timeInForce", "GTC") if kind != "MARKET" else "GTC",
            "type": kind,
            "side": side,
            "stopPrice": _fmt(Decimal(0)),
            "icebergQty": _fmt(Decimal(0)),
            "time": now,
            "updateTime": now,
            "isWorking": True,
            "workingTime": now,
            "origQuoteOrderQty": _fmt(Decimal(0)),
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "fills": [],
        }
        # Funds move to locked while the order works.
        self.balances[spend_asset] -= spend
        self.locked[spend_asset] = self.locked.get(spend_asset, Decimal(0)) + spend
        order["_locked"] = spend
        order["_lock_asset"] = spend_asset
        self.orders[order["orderId"]] = order
        how = self.fill_script.popleft() if self.fill_script else self.default_fill
        if how == "full":
            self._execute(order, qty, price)
        elif how == "partial":
            part = _steps(qty * self.partial_fraction, _dec(rules.step_size))
            if part > 0:
                self._execute(order, part, price)
        if kind == "MARKET" and order["status"] in OPEN_STATUSES and not self.markets_rest:
            self._close(order, "EXPIRED", now)  # no liquidity left for the rest
        return order

    def _execute(self, order: dict[str, Any], qty: Decimal, price: Decimal) -> None:
        rules = self._rules[order["symbol"]]
        now = int(time.time() * 1000)
        quote = qty * price
        if order["side"] == "BUY":
            spent_asset, spent, got_asset, got = rules.quote, quote, rules.base, qty
        else:
            spent_asset, spent, got_asset, got = rules.base, qty, rules.quote, quote
        commission, fee_asset = got * self.fee_rate, got_asset  # Binance's default
        fee_price = self.prices.get(f"{self.fee_asset}{rules.quote}")
        if self.fee_asset is not None and fee_price:
            in_fee_asset = (quote * self.fee_rate / fee_price).quantize(Decimal("1e-8"))
            if self.balances.get(self.fee_asset, Decimal(0)) >= in_fee_asset:
                commission, fee_asset = in_fee_asset, self.fee_asset
        self.locked[spent_asset] -= spent
        order["_locked"] -= spent
        self.balances[got_asset] = self.balances.get(got_asset, Decimal(0)) + got
        self.balances[fee_asset] -= commission
        trade_id = next(self._trade_ids)
        order["executedQty"] = _fmt(_dec(order["executedQty"]) + qty)
        order["cummulativeQuoteQty"] = _fmt(_dec(order["cummulativeQuoteQty"]) + quote)
        order["updateTime"] = now
        order["fills"].append(
            {
                "price": _fmt(price),
                "qty": _fmt(qty),
                "commission": _fmt(commission),
                "commissionAsset": fee_asset,
                "tradeId": trade_id,
            }
        )
        self.trades.append(
            {
                "symbol": order["symbol"],
                "id": trade_id,
                "orderId": order["orderId"],
                "orderListId": -1,
                "price": _fmt(price),
                "qty": _fmt(qty),
                "quoteQty": _fmt(quote),
                "commission": _fmt(commission),
                "commissionAsset": fee_asset,
                "time": now,
                "isBuyer": order["side"] == "BUY",
                "isMaker": order["type"] != "MARKET",
                "isBestMatch": True,
            }
        )
        full = _dec(order["executedQty"]) >= _dec(order["origQty"])
        if full:
            self._close(order, "FILLED", now)
        else:
            order["status"] = "PARTIALLY_FILLED"

    def _close(self, order: dict[str, Any], status: str, now: int) -> None:
        order["status"] = status
        order["isWorking"] = False
        order["updateTime"] = now
        left: Decimal = order["_locked"]
        if left:  # unspent funds are released (a buy filled below its locked price, a cancel)
            asset = order["_lock_asset"]
            self.locked[asset] -= left
            self.balances[asset] += left
            order["_locked"] = Decimal(0)

    def _find(self, params: dict[str, str]) -> dict[str, Any] | None:
        if "orderId" in params:
            order = self.orders.get(int(params["orderId"]))
        else:
            order = self.order_by_client_id(params.get("origClientOrderId", ""))
        if order is None or order["symbol"] != params.get("symbol"):
            return None
        return order

    def _order_answer(self, order: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        shape = params.get("newOrderRespType", "FULL" if order["type"] == "MARKET" else "ACK")
        if shape == "ACK":
            keys = ("symbol", "orderId", "orderListId", "clientOrderId", "transactTime")
            return {k: order[k] for k in keys}
        answer = self._public(order)
        for key in ("time", "updateTime", "isWorking", "stopPrice", "icebergQty"):
            answer.pop(key, None)
        if shape == "RESULT":
            answer.pop("fills")
        return answer

    @staticmethod
    def _public(order: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in order.items() if not k.startswith("_") and k != "fills"} | (
            {"fills": list(order["fills"])}
        )

    def _my_trades(self, params: dict[str, str]) -> list[dict[str, Any]]:
        symbol = params.get("symbol")
        found = [t for t in self.trades if t["symbol"] == symbol]
        if "orderId" in params:
            found = [t for t in found if t["orderId"] == int(params["orderId"])]
        if "fromId" in params:
            found = [t for t in found if t["id"] >= int(params["fromId"])]
        if "startTime" in params:
            found = [t for t in found if t["time"] >= int(params["startTime"])]
        return found[: int(params.get("limit", 500))]

    def _ticker(self, symbol: str, now: int) -> dict[str, Any] | None:
        price = self.prices.get(symbol)
        if price is None:
            return None
        tick = price * Decimal("0.0001")
        return {
            "symbol": symbol,
            "priceChange": "0.00000000",
            "priceChangePercent": "0.000",
            "weightedAvgPrice": _fmt(price),
            "prevClosePrice": _fmt(price),
            "lastPrice": _fmt(price),
            "lastQty": "1.00000000",
            "bidPrice": _fmt(price - tick),
            "bidQty": "1.00000000",
            "askPrice": _fmt(price + tick),
            "askQty": "1.00000000",
            "openPrice": _fmt(price),
            "highPrice": _fmt(price),
            "lowPrice": _fmt(price),
            "volume": "100.00000000",
            "quoteVolume": _fmt(price * 100),
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 1,
            "lastId": 100,
            "count": 100,
        }

    def _account(self, now: int) -> dict[str, Any]:
        assets = sorted(set(self.balances) | set(self.locked))
        return {
            "makerCommission": 10,
            "takerCommission": 10,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "updateTime": now,
            "accountType": "SPOT",
            "balances": [
                {
                    "asset": a,
                    "free": _fmt(self.balances.get(a, Decimal(0))),
                    "locked": _fmt(self.locked.get(a, Decimal(0))),
                }
                for a in assets
            ],
            "permissions": ["SPOT"],
        }

    def _exchange_info(self, now: int) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": now,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.weight_limit or 6000,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(rules) for rules in self.symbols],
        }


def kline_event(
    symbol: str,
    interval: str,
    interval_ms: int,
    row: list[Any],
    *,
    closed: bool,
) -> dict[str, Any]:
    """A Binance kline stream event for ``row`` (``[open time, open, high, low, close,
    volume]``); ``closed`` is its ``x`` flag (the candle's final update)."""
    t = int(row[0])
    return {
        "e": "kline",
        "E": t + interval_ms - 1 if closed else t + interval_ms // 2,
        "s": symbol,
        "k": {
            "t": t,
            "T": t + interval_ms - 1,
            "s": symbol,
            "i": interval,
            "f": 100,
            "L": 200,
            "o": _fmt(_dec(row[1])),
            "c": _fmt(_dec(row[4])),
            "h": _fmt(_dec(row[2])),
            "l": _fmt(_dec(row[3])),
            "v": _fmt(_dec(row[5])),
            "n": 101,
            "x": closed,
            "q": "0",
            "V": "0",
            "Q": "0",
            "B": "0",
        },
    }


def _symbol_info(rules: SymbolRules) -> dict[str, Any]:
    return {
        "symbol": rules.symbol,
        "status": "TRADING",
        "baseAsset": rules.base,
        "baseAssetPrecision": 8,
        "quoteAsset": rules.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": list(rules.order_types),
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": rules.tick_size,
                "maxPrice": "1000000.00000000",
                "tickSize": rules.tick_size,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": rules.min_qty,
                "maxQty": rules.max_qty,
                "stepSize": rules.step_size,
            },
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": "0.00000000",
                "maxQty": rules.max_qty,
                "stepSize": "0.00000000",
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": rules.min_notional,
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)
