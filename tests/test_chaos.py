"""Chaos on real servers and real BTC/USD candles: outages, crashes and controls.

Each test runs the rendered feed, inference and executor as processes against a NATS server and
a PostgreSQL of its own (so it can stop and restart them on the same port, store and socket),
injects one kind of fault, and ends with the same checks: fills identical to the in-process
backtest, every candle stored once (table and stream), every order and fill in the stream once.
A worker that exits is restarted from the test, as its Deployment would be; the one that is
meant to give up (an outage past its limit) must exit non-zero with the reason in its log.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
import pytest

from kubetrade.backtest import run_backtest
from kubetrade.bus import connect
from kubetrade.domain import Fill, OrderReason
from kubetrade.embedded import EmbeddedNats, EmbeddedPostgres, start_nats, start_postgres
from kubetrade.market.sources import load_source_candles
from kubetrade.messages import ControlMessage, decode_candles, encode
from kubetrade.modelstore.predictor import OnnxPredictor
from kubetrade.processes import LocalProcess
from kubetrade.runner import LocalProcesses, RunOptions, plan
from kubetrade.runtime import EXIT_OUTAGE
from kubetrade.settings import ENV_OUTAGE_LIMIT_S
from kubetrade.spec import TradingBot
from kubetrade.store import RowCounts, Store
from kubetrade.subjects import Subjects
from tests.integration_support import make_bot

pytestmark = pytest.mark.integration

CANDLES = 1000
PACE = 3600 * 50  # 50 one-hour candles per second: a run lasts ~20 s, long enough to hit
COMPONENTS = ("inference", "executor", "feed")


@pytest.fixture(scope="module")
def btc_slice(tmp_path_factory: pytest.TempPathFactory, btc_csv: Path) -> Path:
    """The newest CANDLES hours of the real BTC/USD file, in its own layout."""
    lines = btc_csv.read_text().splitlines()
    path = tmp_path_factory.mktemp("btc") / "btc_slice.csv"
    path.write_text("\n".join(lines[: 2 + CANDLES]) + "\n")
    return path


def _bot(name: str, data: Path, model: str) -> TradingBot:
    """A paper bot on the replayed slice, loose enough to trade on the small test model."""
    return make_bot(name, {"name": "replay", "uri": str(data), "speed": PACE}, ["BTC/USD"], model)


@dataclass
class Cluster:
    """A NATS and a PostgreSQL of one test, and the bot's worker processes on them."""

    root: Path
    nats: EmbeddedNats
    pg: EmbeddedPostgres
    bot: TradingBot
    procs: LocalProcesses
    planned: dict[str, LocalProcess] = field(default_factory=dict)
    expected_exits: set[str] = field(default_factory=set)

    @property
    def db_url(self) -> str:
        return self.pg.url

    def start(self, limits: dict[str, float] | None = None) -> None:
        """Start the three workers (``limits``: outage limit per component)."""
        options = RunOptions(report_dir=self.root, nats_url=self.nats.url, database_url=self.db_url)
        for process in plan(self.bot, self.nats.url, self.db_url, options):
            env = dict(process.env)
            if limits and process.component in limits:
                env[ENV_OUTAGE_LIMIT_S] = str(limits[process.component])
            self.planned[process.component] = replace(process, env=env)
        for component in COMPONENTS:
            self.procs.start(self.planned[component])

    def restart(self, component: str) -> None:
        self.procs.start(self.planned[component])

    def exited(self) -> dict[str, int]:
        return {c: p.returncode for c, p in self.procs.running.items() if p.poll() is not None}

    def log_tail(self, component: str) -> str:
        path = self.procs.log_dir / f"{component}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def counts(self) -> RowCounts | None:
        """The ledger's row counts, or None while the database is unreachable."""
        try:
            with Store.connect(self.db_url) as db:
                return db.count_rows(self.bot.key)
        except psycopg.Error:
            return None

    def wait(self, until: Callable[[RowCounts], bool], timeout: float) -> RowCounts:
        """Poll the ledger until ``until(counts)``; fail at once if a worker exits unasked."""
        deadline = time.monotonic() + timeout
        counts = None
        while time.monotonic() < deadline:
            for component, code in self.exited().items():
                if component not in self.expected_exits:
                    pytest.fail(f"{component} exited with {code}:\n{self.log_tail(component)}")
            counts = self.counts()
            if counts is not None and until(counts):
                return counts
            time.sleep(0.25)
        pytest.fail(f"not reached within {timeout:.0f}s; ledger {counts}")

    def done(self, timeout: float = 180) -> RowCounts:
        return self.wait(lambda c: c.candles >= CANDLES and c.signals >= CANDLES, timeout)

    def control(self, action: str) -> None:
        asyncio.run(_control(self.nats.url, self.bot, action))


@pytest.fixture
def cluster(
    tmp_path: Path, model: str, btc_slice: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    name = "chaos-" + "".join(ch for ch in request.node.name.lower() if ch.isalnum())[-20:]
    bot = _bot(name, btc_slice, model)
    nats = start_nats(tmp_path / "nats")
    # Not under pytest's tmp_path: pgserver's server user must reach it (see tests.fixtures_db).
    pg_dir = Path(tempfile.mkdtemp(prefix="kubetrade-chaos-pg-"))
    pg = start_postgres(pg_dir / "data")
    state = Cluster(tmp_path, nats, pg, bot, LocalProcesses(tmp_path / "logs"))
    try:
        yield state
    finally:
        state.procs.stop()
        state.nats.stop()
        state.pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


async def _control(nats_url: str, bot: TradingBot, action: str) -> None:
    nc = await connect(nats_url, "chaos")
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    await nc.request(subjects.control, encode(ControlMessage(action=action, reason="chaos")), 10)
    await nc.drain()


async def _stream_ids(nats_url: str, bot: TradingBot) -> dict[str, list[str]]:
    """The key of every candle (inside the feed's batches) and the Nats-Msg-Id of every order
    and fill message in the stream, in order."""
    subjects = Subjects(bot.metadata.namespace, bot.metadata.name)
    nc = await connect(nats_url, "chaos")
    js = nc.jetstream()
    info = await js.stream_info(subjects.stream)
    found: dict[str, list[str]] = {"candles": [], "orders": [], "fills": []}
    sub = await js.subscribe(f"{subjects.prefix}.>", stream=subjects.stream, ordered_consumer=True)
    try:
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=10)
            kind = msg.subject.removeprefix(subjects.prefix + ".").split(".")[0]
            if kind == "candles":
                batch = decode_candles(msg.subject, msg.data)
                found[kind].extend(c.to_candle().key for c in batch)
            elif kind in found:
                found[kind].append((msg.headers or {}).get("Nats-Msg-Id", ""))
    finally:
        await sub.unsubscribe()
        await nc.drain()
    return found


def _fill_key(fill: Fill) -> tuple[int, str, str, float, float]:
    return (fill.time, fill.symbol, fill.side.value, fill.price, fill.quantity)


def _assert_exact(cluster: Cluster) -> None:
    """Fills as the backtest's; every candle, order and fill once in the ledger and stream."""
    bot = cluster.bot
    with Store.connect(cluster.db_url) as db:
        fills = db.read_fills(bot.key)
        orders = db.read_orders(bot.key)
        counts = db.count_rows(bot.key)
    model = bot.spec.model
    predictor = None if model is None else OnnxPredictor.load(model.name, model.version)
    expected = run_backtest(bot, load_source_candles(bot), predictor).fills
    assert len(expected) > 5
    assert [_fill_key(f) for f in fills] == [_fill_key(f) for f in expected]
    assert counts.candles == CANDLES
    stream = asyncio.run(_stream_ids(cluster.nats.url, bot))
    for kind, ledger in (("candles", CANDLES), ("orders", len(orders)), ("fills", len(fills))):
        ids = stream[kind]
        assert len(ids) == ledger, f"{kind}: {len(ids)} in the stream, {ledger} in the ledger"
        assert len(set(ids)) == len(ids), f"{kind}: a message is in the stream twice"


def _outage_of_nats(cluster: Cluster, seconds: float) -> None:
    cluster.nats.stop()
    time.sleep(seconds)  # the fault itself: the server is down this long
    cluster.nats = cluster.nats.restart()


def _outage_of_postgres(cluster: Cluster, seconds: float) -> None:
    started = time.monotonic()
    cluster.pg.stop()
    time.sleep(max(seconds - (time.monotonic() - started), 0))  # down this long in all
    cluster.pg = cluster.pg.restart()


def _mid_run(counts: RowCounts) -> bool:
    return counts.signals >= 150


@pytest.mark.parametrize("seconds", [10, 30])
def test_nats_outage_is_ridden_out(cluster: Cluster, seconds: int) -> None:
    """NATS stopped and started again on the same port and store: the run completes exactly."""
    cluster.start()
    cluster.wait(_mid_run, 120)
    _outage_of_nats(cluster, seconds)
    cluster.done()
    _assert_exact(cluster)


def test_nats_outage_past_the_limit_exits_and_within_it_rides_out(cluster: Cluster) -> None:
    """90 s without NATS: the executor (limit 40 s) exits non-zero saying why; the feed and
    inference (limits 150 s) ride it out. The executor, restarted, completes the run exactly."""
    cluster.start({"executor": 40, "feed": 150, "inference": 150})
    cluster.wait(_mid_run, 120)
    cluster.expected_exits.add("executor")
    cluster.nats.stop()
    down = time.monotonic()
    proc = cluster.procs.running["executor"]
    code = proc.wait(timeout=75)
    exited_after = time.monotonic() - down
    assert code == EXIT_OUTAGE, cluster.log_tail("executor")
    reason = [line for line in cluster.log_tail("executor").splitlines() if "exiting:" in line]
    assert len(reason) == 1 and "NATS unreachable" in reason[0], cluster.log_tail("executor")
    assert 40 <= exited_after < 70
    time.sleep(max(90 - (time.monotonic() - down), 0))  # the rest of the 90 s outage
    cluster.nats = cluster.nats.restart()
    assert cluster.exited() == {"executor": EXIT_OUTAGE}, "only the executor's limit was shorter"
    cluster.expected_exits.clear()
    cluster.restart("executor")
    cluster.done()
    _assert_exact(cluster)


@pytest.mark.parametrize("seconds", [10, 30])
def test_postgres_outage_is_ridden_out(cluster: Cluster, seconds: int) -> None:
    """PostgreSQL stopped and started again on the same socket: nothing lost or doubled."""
    cluster.start()
    cluster.wait(_mid_run, 120)
    _outage_of_postgres(cluster, seconds)
    cluster.done()
    _assert_exact(cluster)


def test_twenty_sigkills_of_random_workers(cluster: Cluster) -> None:
    """SIGKILL feed, inference or executor at 20 random moments of one run, restarting each."""
    rng = random.Random(20)
    cluster.start()
    cluster.wait(lambda c: c.signals >= 50, 120)
    killed = []
    for _ in range(20):
        time.sleep(rng.uniform(0.2, 1.5))  # a random moment of the run
        victim = rng.choice(COMPONENTS)
        cluster.procs.kill(victim)
        cluster.restart(victim)
        killed.append(victim)
    assert set(killed) == set(COMPONENTS)
    cluster.done(240)
    _assert_exact(cluster)


def _entries(db_url: str, bot: TradingBot) -> int:
    with Store.connect(db_url) as db:
        orders = [stored.order for stored in db.read_orders(bot.key)]
    return sum(o.reason in (OrderReason.ENTRY_LONG, OrderReason.ENTRY_SHORT) for o in orders)


def _state(cluster: Cluster) -> dict[str, object]:
    with Store.connect(cluster.db_url) as db:
        checkpoint = db.load_checkpoint(cluster.bot.key)
    assert checkpoint is not None
    return checkpoint.state


def test_pause_and_kill_survive_an_executor_restart(cluster: Cluster) -> None:
    """Pause and kill are committed when answered; a SIGKILLed executor comes back paused and
    halted, and trades no more until the end of the run."""
    cluster.start()
    cluster.wait(_mid_run, 120)
    cluster.control("pause")  # answered only once committed
    assert _state(cluster)["paused"] is True
    cluster.control("kill")
    halted = _state(cluster)
    assert halted["paused"] is True and halted["kill_reason"]
    entries = _entries(cluster.db_url, cluster.bot)
    cluster.procs.kill("executor")
    cluster.restart("executor")
    cluster.done()
    after = _state(cluster)
    assert after["paused"] is True and after["kill_reason"] == halted["kill_reason"]
    assert _entries(cluster.db_url, cluster.bot) == entries, "a halted bot traded after restart"
