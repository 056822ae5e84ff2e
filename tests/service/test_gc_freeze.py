"""While the app serves, what existed once it had started is left out of garbage collection
(``service.app.startup_objects_frozen``: full collections otherwise stalled a worker for 210-300 ms under load)."""

from __future__ import annotations

import gc

from service.settings import Settings
from tests.harness import Harness


def _collected(obj: object) -> bool:
    """Whether ``obj`` is in a generation the collector walks (frozen objects are in none of them)."""
    return any(o is obj for o in gc.get_objects())


def test_objects_of_the_started_app_are_frozen_while_it_serves_and_handed_back_after(
    service_settings: Settings,
) -> None:
    gc.unfreeze()  # whatever an earlier app of this process left
    with Harness.start(service_settings) as api:
        services = api.app.state.services
        assert gc.get_freeze_count() > 0
        assert not _collected(services)
        assert api.client.get("/healthz").status_code == 200
        made_later = [object(), {"made": "after startup"}]
        assert _collected(made_later)  # new objects are collected as usual
    assert gc.get_freeze_count() == 0
    assert _collected(services)
