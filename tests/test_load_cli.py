"""`load` subcommand: registered on a parent parser the way `python -m stack` will."""
from __future__ import annotations

import argparse
import json

from stack.load import cli
from stack.load.testserver import TestServer


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stack")
    cli.register(top.add_subparsers(dest="command"))
    return top


def test_load_subcommand_prints_json(capsys):
    with TestServer(identities=("app-1", "app-2")) as server:
        args = parser().parse_args(["load", "--url", server.url, "--mode", "open", "--arrivals", "uniform", "--rate", "100",
                                    "--duration", "0.5", "--mix", "users:0.5", "--keys", "zipf", "--json"])
        code = args.handler(args)
    out = capsys.readouterr().out
    data = json.loads(out)
    assert code == 0
    assert data["sent"] == 50 and data["ok"] == 50
    assert set(data["replicas"]) == {"app-1", "app-2"}
    assert data["spec"]["mix"]["keys"]["kind"] == "zipf"
    assert set(data["requests"]) == {"GET /users/{id}", "PUT /users/{id}"}


def test_load_subcommand_streams_lines_and_summarises(capsys):
    with TestServer() as server:
        args = parser().parse_args(["load", "--url", server.url, "--mode", "closed", "-c", "2",
                                    "-d", "0.6", "--interval", "0.25", "--path", "/status/503"])
        code = args.handler(args)
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.count("rps") >= 2                       # live lines while running
    assert "closed loop" in captured.out and "5xx" in captured.out
    assert "warning:" in captured.out


def test_bad_arguments_exit_2_with_field_value_and_allowed(capsys):
    args = parser().parse_args(["load", "--url", "http://127.0.0.1:9", "--rate", "0"])
    assert args.handler(args) == 2
    assert "rate=0.0 is not allowed: a number greater than 0" in capsys.readouterr().err
