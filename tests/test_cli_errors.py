"""The command line turns our errors into one message and the exit code of their branch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubetrade.cli import main
from kubetrade.errors import (
    ROOT_AND_BRANCHES,
    InvalidInputError,
    ModelError,
    exit_code,
)
from kubetrade.settings import QUIET_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_each_branch_has_its_own_exit_code_and_help_lists_them() -> None:
    codes = [exit_code(branch("x")) for branch in ROOT_AND_BRANCHES]
    assert len(set(codes)) == len(codes)
    assert 0 not in codes and 130 not in codes
    shown = CliRunner().invoke(main, ["--help"]).output
    for branch in ROOT_AND_BRANCHES:
        assert f"{branch.exit_code}    {branch.what}" in shown


def test_a_bad_manifest_exits_2_naming_the_field_without_a_traceback(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: kubetrade.io/v1alpha1\nkind: TradingBot\nmetadata: {name: bad}\n"
        "spec: {symbols: [BTC/USDT], model: {name: m}, timeframe: 7m}\n"
    )
    result = CliRunner().invoke(main, ["check", str(manifest)])

    assert result.exit_code == InvalidInputError.exit_code == 2
    assert result.output.startswith(f"kubetrade check: {manifest}: invalid TradingBot manifest")
    assert "spec.timeframe" in result.output
    assert "Traceback" not in result.output


def test_a_bad_candle_file_exits_2_with_one_line(tmp_path: Path) -> None:
    candles = tmp_path / "candles.csv"
    candles.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(main, ["train", "--data", str(candles), "--name", "m"])

    assert result.exit_code == 2
    # The spinner, transient, leaves at most a blank line behind.
    [line] = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(f"kubetrade train: {candles}: no header and 2 columns")


@pytest.mark.integration
def test_a_missing_model_exits_3_with_one_line(tmp_path: Path) -> None:
    """In a process of its own: the model store is read from BENTOML_HOME at start-up."""
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(tmp_path / "store")}
    done = subprocess.run(
        [sys.executable, "-m", "kubetrade", "backtest", "k8s/examples/synthetic-paper.yaml"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == ModelError.exit_code == 3
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("kubetrade backtest: no model named 'kubetrade-baseline'")
