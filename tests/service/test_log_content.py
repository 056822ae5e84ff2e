"""No memory text reaches the log through a third-party library, even at SEALMEM_LOG_LEVEL=DEBUG.

presidio-analyzer logs the words around a detected entity at DEBUG ("Context list is: ..."); the at-rest proof
once found a canary from a memory that way in serve.log. Each check runs in a fresh interpreter with the
service's logging set up as `sealmem serve` sets it up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CANARY = "Zqxcanaryword"

SCRIPT = textwrap.dedent(
    f"""
    import logging, sys
    from service.logs import configure_logging
    if sys.argv[1] == "configured":
        configure_logging("DEBUG")
    else:  # the leak this guards against, shown with a plain DEBUG handler
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from memory_store.sensitive.detector import PresidioDetector
    hits = PresidioDetector().detect("{CANARY} said: call my phone 212-555-0199 tonight about {CANARY}")
    assert any(h.entity_type == "PHONE_NUMBER" for h in hits), hits
    logging.getLogger("sealmem.test").debug("own debug line")
    logging.getLogger("presidio-analyzer").warning("a library warning")
    """
)


def _stderr(mode: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_a_library_debug_record_never_carries_memory_text() -> None:
    plain = _stderr("plain")
    assert CANARY.lower() in plain.lower()  # unfiltered, presidio writes the words around the phone number
    configured = _stderr("configured")
    assert CANARY.lower() not in configured.lower()
    assert "own debug line" in configured  # Sealmem's own DEBUG records still come through
    assert "a library warning" in configured  # and a library's warnings
