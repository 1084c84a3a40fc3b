"""Cancel and status by client id on Coinbase Advanced Trade, Bybit and Kraken: the live broker
drives the real ccxt client against a small local server (aiohttp, 127.0.0.1, port 0) that
records each request and answers in the exchange's wire format (shapes as in ccxt's recorded
payloads and the exchanges' API documentation). Each test asserts the endpoint and the fields
the exchange would receive, and that the broker reads the answer into the order's state.

The order under test was sent and its answer lost (a timeout): the journal knows its client id
but not the exchange's id, so the broker must find it by client id, in that exchange's own
parameter, then cancel it by the id found. Sandbox (testnet) selection is tested here too.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import ccxt.async_support as ccxt_async
import pytest
from aiohttp import web

from kubetrade.domain import Side
from kubetrade.errors import ExchangeError
from kubetrade.live.broker import FIND_BY_CLIENT_ID, LiveBroker
from kubetrade.live.exchange import Credentials, connect_exchange
from kubetrade.market.exchange import create_exchange
from kubetrade.trading.client_ids import CLIENT_ID_PARAMS, exchange_client_id
from kubetrade.trading.order_state import LiveOrder, LiveStatus
from tests.test_client_ids import coinbase_pem, market

CID = exchange_client_id("trading/btc", "btc:BTC/USDT:1700000000000:entry_long")
NOW_S = 1_700_000_000


@dataclass
class Seen:
    """One request as the exchange received it."""

    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]


@dataclass
class Venue:
    """A local exchange stand-in: ``answer`` maps each request to (status, JSON) given whether
    the order was cancelled yet; every request is recorded."""

    answer: Callable[[Seen, bool], tuple[int, Any]]
    cancel_path: str
    seen: list[Seen] = field(default_factory=list)
    cancelled: bool = False
    runner: web.AppRunner | None = None

    async def start(self) -> str:
        async def handle(request: web.Request) -> web.Response:
            text = await request.text()
            if text.startswith("{"):
                body: dict[str, Any] = json.loads(text)
            else:
                body = dict(parse_qsl(text, keep_blank_values=True))
            seen = Seen(request.method, request.path, dict(request.query), body)
            self.seen.append(seen)
            status, payload = self.answer(seen, self.cancelled)
            if request.path == self.cancel_path and status == 200:
                self.cancelled = True
            return web.json_response(payload, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class MemoryJournal:
    """The broker's journal, in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, LiveOrder] = {}

    async def journal_intent(self, bot: str, order: LiveOrder) -> bool:
        if order.client_id in self.rows:
            return False
        self.rows[order.client_id] = order
        return True

    async def journal_update(self, bot: str, order: LiveOrder) -> None:
        self.rows[order.client_id] = order

    async def read_journal(self, bot: str) -> list[LiveOrder]:
        return list(self.rows.values())

    async def record_baseline(self, bot: str, balances: Mapping[str, float]) -> dict[str, float]:
        return dict(balances)


# -- Bybit (v5 API: /v5/order/realtime, /v5/order/history, /v5/order/cancel) -------------------

BYBIT_ID = "1321003749386327552"


def bybit_order(status: str) -> dict[str, Any]:
    return {
        "orderId": BYBIT_ID,
        "orderLinkId": CID,
        "blockTradeId": "",
        "symbol": "BTCUSDT",
        "price": "60000",
        "qty": "0.001",
        "side": "Buy",
        "isLeverage": "0",
        "positionIdx": 0,
        "orderStatus": status,
        "cancelType": "UNKNOWN" if status == "New" else "CancelByUser",
        "rejectReason": "EC_NoError",
        "avgPrice": "0",
        "leavesQty": "0.001" if status == "New" else "0",
        "leavesValue": "60" if status == "New" else "0",
        "cumExecQty": "0",
        "cumExecValue": "0",
        "cumExecFee": "0",
        "timeInForce": "GTC",
        "orderType": "Limit",
        "stopOrderType": "",
        "orderIv": "",
        "triggerPrice": "0",
        "takeProfit": "0",
        "stopLoss": "0",
        "tpTriggerBy": "",
        "slTriggerBy": "",
        "triggerDirection": 0,
        "triggerBy": "",
        "lastPriceOnCreated": "",
        "reduceOnly": False,
        "closeOnTrigger": False,
        "smpType": "None",
        "smpGroup": 0,
        "smpOrderId": "",
        "createdTime": str(NOW_S * 1000),
        "updatedTime": str(NOW_S * 1000 + 5),
    }


def bybit_list(orders: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "retCode": 0,
        "retMsg": "OK",
        "result": {"list": orders, "nextPageCursor": "", "category": "spot"},
        "retExtInfo": {},
        "time": NOW_S * 1000,
    }


def bybit_answer(seen: Seen, cancelled: bool) -> tuple[int, Any]:
    if seen.path == "/v5/order/realtime":
        return 200, bybit_list([] if cancelled else [bybit_order("New")])
    if seen.path == "/v5/order/history":
        return 200, bybit_list([bybit_order("Cancelled")] if cancelled else [])
    if seen.path == "/v5/order/cancel":
        result = {"orderId": BYBIT_ID, "orderLinkId": CID}
        return 200, {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": 1}
    return 404, {"retCode": 10001, "retMsg": f"unexpected {seen.path}"}


# -- Kraken (REST: /0/private/OpenOrders, ClosedOrders, CancelOrder) ---------------------------

KRAKEN_ID = "OUF4EM-FRGI2-MQMWZD"


def kraken_order(status: str) -> dict[str, Any]:
    return {
        "refid": None,
        "userref": 0,
        "cl_ord_id": CID,
        "status": status,
        "opentm": NOW_S + 0.1,
        "closetm": NOW_S + 9.5 if status != "open" else None,
        "starttm": 0,
        "expiretm": 0,
        "descr": {
            "pair": "XBTUSD",
            "type": "buy",
            "ordertype": "limit",
            "price": "60000.0",
            "price2": "0",
            "leverage": "none",
            "order": "buy 0.00100000 XBTUSD @ limit 60000.0",
            "close": "",
        },
        "vol": "0.00100000",
        "vol_exec": "0.00000000",
        "cost": "0.00000",
        "fee": "0.00000",
        "price": "0.00000",
        "stopprice": "0.00000",
        "limitprice": "0.00000",
        "misc": "",
        "oflags": "fciq",
        **({"reason": "User requested"} if status == "canceled" else {}),
    }


def kraken_answer(seen: Seen, cancelled: bool) -> tuple[int, Any]:
    if seen.path == "/0/private/OpenOrders":
        opened = {} if cancelled else {KRAKEN_ID: kraken_order("open")}
        return 200, {"error": [], "result": {"open": opened}}
    if seen.path == "/0/private/ClosedOrders":
        closed = {KRAKEN_ID: kraken_order("canceled")} if cancelled else {}
        return 200, {"error": [], "result": {"closed": closed, "count": len(closed)}}
    if seen.path == "/0/private/CancelOrder":
        return 200, {"error": [], "result": {"count": 1}}
    return 200, {"error": [f"EGeneral:Unexpected {seen.path}"]}


# -- Coinbase Advanced Trade (/api/v3/brokerage/orders/historical/batch, batch_cancel) ---------

COINBASE_ID = "11111111-2222-3333-4444-555555555555"


def coinbase_order(status: str) -> dict[str, Any]:
    return {
        "order_id": COINBASE_ID,
        "product_id": "BTC-USDC",
        "user_id": "2222-000000-000000",
        "order_configuration": {
            "limit_limit_gtc": {"base_size": "0.001", "limit_price": "60000", "post_only": False}
        },
        "side": "BUY",
        "client_order_id": CID,
        "status": status,
        "time_in_force": "GOOD_UNTIL_CANCELLED",
        "created_time": "2023-11-14T22:13:20.000000Z",
        "completion_percentage": "0",
        "filled_size": "0",
        "average_filled_price": "0",
        "fee": "",
        "number_of_fills": "0",
        "filled_value": "0",
        "pending_cancel": False,
        "size_in_quote": False,
        "total_fees": "0",
        "size_inclusive_of_fees": False,
        "total_value_after_fees": "0",
        "trigger_status": "INVALID_ORDER_TYPE",
        "order_type": "LIMIT",
        "reject_reason": "REJECT_REASON_UNSPECIFIED",
        "settled": False,
        "product_type": "SPOT",
        "reject_message": "",
        "cancel_message": "User requested cancel" if status == "CANCELLED" else "",
        "order_placement_source": "RETAIL_ADVANCED",
    }


def coinbase_answer(seen: Seen, cancelled: bool) -> tuple[int, Any]:
    if seen.path == "/api/v3/brokerage/orders/historical/batch":
        # Another bot's order first: the broker must pick its own by client id.
        other = {**coinbase_order("OPEN"), "order_id": "other", "client_order_id": "other"}
        mine = coinbase_order("CANCELLED" if cancelled else "OPEN")
        return 200, {"orders": [other, mine], "sequence": "0", "has_next": False, "cursor": ""}
    if seen.path == f"/api/v3/brokerage/orders/historical/{COINBASE_ID}":
        return 200, {"order": coinbase_order("CANCELLED" if cancelled else "OPEN")}
    if seen.path == "/api/v3/brokerage/orders/batch_cancel":
        result = {"success": True, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON"}
        return 200, {"results": [{**result, "order_id": COINBASE_ID}]}
    return 404, {"error": "NOT_FOUND", "message": f"unexpected {seen.path}"}


@dataclass(frozen=True)
class Case:
    credentials: Credentials
    market: dict[str, Any]
    answer: Callable[[Seen, bool], tuple[int, Any]]
    cancel_path: str
    exchange_id: str


CASES = {
    "bybit": Case(
        Credentials("k", "s"),
        market("BTC/USDT", "BTCUSDT"),
        bybit_answer,
        "/v5/order/cancel",
        BYBIT_ID,
    ),
    "kraken": Case(
        Credentials("k", base64.b64encode(b"s" * 64).decode()),
        market("BTC/USD", "XXBTZUSD", info={"altname": "XBTUSD", "wsname": "XBT/USD"}),
        kraken_answer,
        "/0/private/CancelOrder",
        KRAKEN_ID,
    ),
    "coinbase": Case(
        Credentials("organizations/org1/apiKeys/key1", coinbase_pem()),
        market("BTC/USDC", "BTC-USDC"),
        coinbase_answer,
        "/api/v3/brokerage/orders/batch_cancel",
        COINBASE_ID,
    ),
}


def lost_answer_then_cancel(
    name: str, answer: Callable[[Seen, bool], tuple[int, Any]] | None = None
) -> tuple[Venue, list[LiveOrder]]:
    """Journal an order whose create answer was lost, refresh it (found by client id), cancel
    it; the venue's requests and the order after each step."""
    case = CASES[name]
    venue = Venue(answer or case.answer, case.cancel_path)

    async def scenario() -> list[LiveOrder]:
        base = await venue.start()
        exchange = connect_exchange(name, case.credentials, api_base=base, timeout_ms=5_000)
        exchange.set_markets([case.market])
        if name == "kraken":
            # What Kraken's market load indexes (order answers name the pair by its altname).
            exchange.options["marketsByAltname"] = {"XBTUSD": exchange.markets["BTC/USD"]}
        try:
            broker = LiveBroker(
                exchange,
                exchange_name=name,
                bot_key="trading/btc",
                journal=MemoryJournal(),
                markets={},
                attempts=1,
            )
            sent = LiveOrder(
                client_id=CID,
                decision_id="btc:BTC/USDT:1700000000000:entry_long",
                leg=0,
                symbol=case.market["symbol"],
                side=Side.BUY,
                kind="limit",
                amount=0.001,
                price=60_000.0,
            )
            broker.orders[CID] = sent
            found = (await broker.refresh(CID)).order
            asked = len(venue.seen)
            cancelled = (await broker.cancel(CID)).order
            assert len(venue.seen) > asked
            return [found, cancelled]
        finally:
            await exchange.close()
            await venue.stop()

    return venue, asyncio.run(scenario())


def requests_to(venue: Venue, path: str) -> list[Seen]:
    return [s for s in venue.seen if s.path == path]


def test_bybit_finds_by_order_link_id_and_cancels_by_order_id() -> None:
    venue, (found, cancelled) = lost_answer_then_cancel("bybit")
    assert (found.status, found.exchange_id) == (LiveStatus.OPEN, BYBIT_ID)
    lookup = requests_to(venue, "/v5/order/realtime")[0]
    assert lookup.method == "GET"
    assert lookup.query["orderLinkId"] == CID
    assert (lookup.query["category"], lookup.query["symbol"]) == ("spot", "BTCUSDT")
    (cancel,) = requests_to(venue, "/v5/order/cancel")
    assert cancel.method == "POST"
    assert cancel.body == {
        "symbol": "BTCUSDT",
        "orderId": BYBIT_ID,
        "orderFilter": "Order",
        "category": "spot",
    }
    # After the cancel it is no longer open: found among the finished orders, by client id.
    history = requests_to(venue, "/v5/order/history")[-1]
    assert history.query["orderLinkId"] == CID and "orderStatus" not in history.query
    assert cancelled.status is LiveStatus.CANCELLED


def test_kraken_finds_by_cl_ord_id_and_cancels_by_txid() -> None:
    venue, (found, cancelled) = lost_answer_then_cancel("kraken")
    # AddOrder's answer does not echo cl_ord_id; the open orders filtered by it do.
    assert (found.status, found.exchange_id) == (LiveStatus.OPEN, KRAKEN_ID)
    lookup = requests_to(venue, "/0/private/OpenOrders")[0]
    assert lookup.method == "POST" and lookup.body["cl_ord_id"] == CID and "nonce" in lookup.body
    (cancel,) = requests_to(venue, "/0/private/CancelOrder")
    assert cancel.body["txid"] == KRAKEN_ID and "cl_ord_id" not in cancel.body
    closed = requests_to(venue, "/0/private/ClosedOrders")[-1]
    assert closed.body["cl_ord_id"] == CID
    assert cancelled.status is LiveStatus.CANCELLED


def test_coinbase_finds_by_client_order_id_and_cancels_by_order_id() -> None:
    venue, (found, cancelled) = lost_answer_then_cancel("coinbase")
    assert (found.status, found.exchange_id) == (LiveStatus.OPEN, COINBASE_ID)
    lookup = requests_to(venue, "/api/v3/brokerage/orders/historical/batch")[0]
    # The order list has no client-id filter: recent orders of the product, every status,
    # matched on client_order_id by the broker.
    assert lookup.method == "GET" and lookup.query["product_id"] == "BTC-USDC"
    assert "order_status" not in lookup.query
    (cancel,) = requests_to(venue, "/api/v3/brokerage/orders/batch_cancel")
    assert cancel.method == "POST" and cancel.body == {"order_ids": [COINBASE_ID]}
    # Once its id is known, the order is asked for by it (it may be older than the list's 100).
    (by_id,) = requests_to(venue, f"/api/v3/brokerage/orders/historical/{COINBASE_ID}")
    assert by_id.method == "GET"
    assert cancelled.status is LiveStatus.CANCELLED


def test_coinbase_cancel_of_a_finished_order_is_no_error() -> None:
    """Coinbase answers a cancel of a filled order with success false (ccxt: BadRequest); the
    broker asks what became of the order instead of raising out of the kill switch."""

    def answer(seen: Seen, cancelled: bool) -> tuple[int, Any]:
        if seen.path.endswith("batch_cancel"):
            failed = {"success": False, "failure_reason": "UNKNOWN_CANCEL_ORDER"}
            return 200, {"results": [{**failed, "order_id": COINBASE_ID}]}
        # Open when found, expired by the time the cancel arrives.
        mine = coinbase_order("EXPIRED" if cancelled else "OPEN")
        if seen.path.endswith(COINBASE_ID):
            return 200, {"order": mine}
        return 200, {"orders": [mine], "sequence": "0", "has_next": False, "cursor": ""}

    venue, (found, after) = lost_answer_then_cancel("coinbase", answer)
    assert found.status is LiveStatus.OPEN
    assert requests_to(venue, "/api/v3/brokerage/orders/batch_cancel")
    # ccxt reads Coinbase's EXPIRED as canceled: finished, nothing filled.
    assert after.status is LiveStatus.CANCELLED and after.filled == 0


def test_every_supported_exchange_can_be_found_by_client_id() -> None:
    assert set(FIND_BY_CLIENT_ID) == set(CLIENT_ID_PARAMS)


@pytest.mark.parametrize(
    ("name", "testnet_host"),
    [("binance", "testnet.binance.vision"), ("bybit", "api-testnet.")],
)
def test_sandbox_uses_the_exchanges_testnet(name: str, testnet_host: str) -> None:
    client = connect_exchange(name, Credentials("k", "s"), sandbox=True)
    try:
        urls = json.dumps(client.urls["api"])
        assert testnet_host in urls
    finally:
        asyncio.run(client.close())


@pytest.mark.parametrize("name", ["kraken", "coinbase"])
def test_sandbox_on_an_exchange_without_testnet_is_refused_by_name(name: str) -> None:
    with pytest.raises(ExchangeError, match=rf"{name} has no testnet.*sandbox: false"):
        connect_exchange(name, Credentials("k", "s"), sandbox=True)


def test_the_feeds_websocket_client_takes_the_testnet_too() -> None:
    client = create_exchange("binance", websocket=True, sandbox=True)
    try:
        ws = json.dumps(client.urls["api"]["ws"])
        assert "testnet.binance.vision" in ws and "stream.binance.com" not in ws
    finally:
        asyncio.run(client.close())


def test_live_broker_leaves_ccxt_rate_limiter_on_only_without_a_shared_budget() -> None:
    class Budget:
        async def take(self, method: str) -> None:
            return None

    async def scenario() -> tuple[bool, bool]:
        with_budget = ccxt_async.binance()
        without = ccxt_async.binance()
        try:
            LiveBroker(
                with_budget,
                exchange_name="binance",
                bot_key="b",
                journal=MemoryJournal(),
                markets={},
                budget=Budget(),  # type: ignore[arg-type]
            )
            LiveBroker(
                without, exchange_name="binance", bot_key="b", journal=MemoryJournal(), markets={}
            )
            return bool(with_budget.enableRateLimit), bool(without.enableRateLimit)
        finally:
            await with_budget.close()
            await without.close()

    assert asyncio.run(scenario()) == (False, True)
