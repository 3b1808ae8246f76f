"""A proposer on an OpenAI-compatible server: dspy-copro and dspy-gepa reach a real HTTP server on 127.0.0.1 through
``proposer_api_base``, its proposals are scored by the shared scorer, its calls and tokens are counted apart from the
task model's, its key never reaches the run folder, and no connection goes anywhere else."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.cli import report_run
from harness.runner import Runner

KEY_ENV = "PROMPTGAP_TEST_PROPOSER_KEY"
KEY = "sk-local-test-7f3a9c"  # a made-up key: the server checks it, the run folder must never hold it
# what the server proposes, in turn: readable instructions a 135M proposer would rarely write
PROPOSALS = ["Write the word with the opposite meaning.", "Give the antonym of the word.",
             "Answer with the opposite of the given word."]


class ChatServer:
    """A minimal OpenAI chat-completions server on 127.0.0.1: answers each POST to ``/v1/chat/completions`` with the
    next of ``PROPOSALS`` (``OK`` to a reachability check) and records each request and the usage it reported."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.refused = 0  # requests without the key
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {KEY}":
                    server.refused += 1
                    self.send_error(401 if self.path == "/v1/chat/completions" else 404)
                    return
                asked = body["messages"][-1]["content"]
                text = "OK" if asked == "Reply with the word OK." else PROPOSALS[len(server.requests) % len(PROPOSALS)]
                server.requests.append(body)
                # token counts of the server's own making (words), so the test can compare sums it knows
                used = {"prompt_tokens": sum(len(str(m["content"]).split()) for m in body["messages"]),
                        "completion_tokens": len(text.split())}
                for k, v in used.items():
                    server.usage[k] += v
                out = json.dumps({"id": f"c{len(server.requests)}", "object": "chat.completion", "created": 0,
                                  "model": body["model"], "usage": {**used, "total_tokens": sum(used.values())},
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
def server(monkeypatch) -> Iterator[ChatServer]:
    """The server, started and stopped; every outgoing connection of the test is recorded, and any to another
    address than the server's is refused."""
    s = ChatServer()
    s.thread.start()
    seen: list[tuple] = []
    connect = socket.socket.connect

    def guarded(sock, address):
        seen.append(address if isinstance(address, tuple) else (address,))
        if isinstance(address, tuple) and address[:2] != ("127.0.0.1", s.port):
            raise ConnectionRefusedError(f"the test allows no connection to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv(KEY_ENV, KEY)
    for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL", "OPENAI_API_KEY"):  # LiteLLM's route, a real key: not used
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s.connections = seen  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(timeout=10)


def served(base_url: str) -> str:
    return (f'proposer = "openai/served-proposer"\nproposer_api_base = "{base_url}"\n'
            f'proposer_api_key_env = "{KEY_ENV}"\nproposer_max_tokens = 32\n')


def test_copro_and_gepa_propose_over_the_wire_and_count_it(server, tmp_path: Path) -> None:
    config = tmp_path / "served.toml"
    config.write_text(f"""
[run]
name = "served"
seeds = [0]
n_boot = 200

[[tasks]]
name = "antonyms"
sizes = {{ train = 6, dev = 4, test = 6 }}

[conditions.base-chat]
[conditions.dspy-copro]
breadth = 2
depth = 1
{served(server.base_url)}
[conditions.dspy-gepa]
max_metric_calls = 16
reflection_minibatch_size = 2
{served(server.base_url)}
[ratio]
base = "base-chat"
texts = ["dspy-copro", "dspy-gepa"]
""")
    run_dir = Runner(config, run_id="served", results_root=tmp_path / "results").run()
    assert server.refused == 0 and server.requests
    assert {c[:2] for c in server.connections if len(c) >= 2} == {("127.0.0.1", server.port)}
    # DSPy's own client: the model's name without its provider prefix, one choice per request
    assert {r["model"] for r in server.requests} == {"served-proposer"}

    total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for condition in ("dspy-copro", "dspy-gepa"):
        cell_dir = run_dir / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" / condition
        cell = json.loads((cell_dir / "cell.json").read_text())
        assert cell["status"] == "ok", cell.get("error")
        used = cell["proposer"]
        assert used["model"] == "openai/served-proposer" and used["where"] == server.base_url
        assert used["calls"] >= 2  # the reachability check and at least one proposal
        for k in total:
            total[k] += used[k]
        assert cell["metric_calls"] >= 4  # the starting instruction on all of dev, at least
        artifact = json.loads((cell_dir / "artifact" / "artifact.json").read_text())
        assert artifact["meta"]["proposer_api_base"] == server.base_url
        proposals = {p["instruction"]: p for p in artifact["meta"]["proposals"]}
        # what came over the wire is what was scored: a served text, scored on all of dev
        scored = [t for t in PROPOSALS if t in proposals and proposals[t]["prompts_scored"]]
        assert scored, f"{condition}: no served proposal was scored ({list(proposals)})"
    # every request the server answered is counted, once, with the usage the server reported
    assert total == {"calls": len(server.requests), **server.usage}

    # the key is named, never written: not in any file of the run folder
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="replace"), f"the key leaked into {f}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["proposers"] == {c: [{"model": "openai/served-proposer", "where": server.base_url}]
                                     for c in ("dspy-copro", "dspy-gepa")}
    config_json = json.loads((run_dir / "config.json").read_text())
    assert config_json["conditions"]["dspy-copro"]["settings"]["proposer_api_key_env"] == KEY_ENV

    # the report shows the proposer's cost in a column of its own, beside the task model's tokens
    report = report_run(run_dir, tmp_path / "reports").read_text()
    lines = report.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| condition | format"))  # the Conditions table
    assert "| proposer (mean over seeds) |" in lines[at]
    copro = json.loads((run_dir / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" / "dspy-copro" /
                        "cell.json").read_text())["proposer"]
    row = next(line for line in lines[at:] if line.startswith("| dspy-copro (text) |"))
    assert f"| {copro['calls']} calls, {copro['prompt_tokens'] + copro['completion_tokens']} tok |" in row


def test_a_key_variable_that_is_not_set_fails_before_the_search(lm, scorer, tmp_path: Path, monkeypatch) -> None:
    from harness.errors import UserError
    from harness.registry import get_optimizer, get_task
    from harness.task import SplitSizes
    from tests.test_dspy import fit_ctx

    monkeypatch.delenv("PROMPTGAP_TEST_UNSET_KEY", raising=False)
    ctx = fit_ctx(lm, scorer, get_task("antonyms"), SplitSizes(train=4, dev=3, test=1), tmp_path)
    with pytest.raises(UserError, match="names PROMPTGAP_TEST_UNSET_KEY, which is not set here"):
        get_optimizer("dspy-copro")(proposer="openai/m", proposer_api_base="http://127.0.0.1:9/v1",
                                    proposer_api_key_env="PROMPTGAP_TEST_UNSET_KEY").fit(ctx)
    assert ctx.reported_log is None  # nothing searched, nothing logged
