"""The examples of ``examples/`` (Python and LangChain) run against the live server, as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sealmem_client_live import REPO, Live

CLIENT_SRC = REPO / "clients" / "python" / "src"


def run_example(live: Live, name: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALMEM_")}
    env.update({"SEALMEM_URL": live.url, "SEALMEM_API_KEY": live.app_key})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_SRC), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_python_quickstart(live: Live) -> None:
    out = run_example(live, "python_quickstart.py")
    for expected in ("added a batch of 2", "search hit", "updated: My dog is named Biscuit and I live in Porto.",
                     "another subject through the token: NotFound", "assistant: ", "deleted the quickstart"):
        assert expected in out, out
    assert "Porto" in out.split("assistant: ", 1)[1]  # the streamed reply used the changed memory


def test_langchain_retrieval(live: Live) -> None:
    pytest.importorskip("langchain_core")
    out = run_example(live, "langchain_retrieval.py")
    assert "retrieved" in out and "cello" in out.split("chain answer:", 1)[0], out
    assert "chain answer: You told me: Plays the cello" in out, out
    assert "history of lc-" in out and "deleted the example" in out, out
