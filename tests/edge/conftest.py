"""Edge tests build apps under different settings: `make` builds one and closes it afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import make_app


@pytest.fixture
def make() -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def _make(url: str, **overrides: Any) -> Any:
        app = make_app(url, **overrides)
        made.append(app)
        return app

    yield _make
    for app in made:
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()
