"""Unit tests start from the driver's own column writers, whatever an earlier test left installed.

With jetsink's writers installed (workers.clickhouse.native, as in a worker) the mapper packs UUID
columns for them; a test that wants that installs them itself."""

import pytest

from workers.clickhouse import native


@pytest.fixture(autouse=True)
def _drivers_own_writers():
    native.uninstall()
    yield
