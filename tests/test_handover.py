"""mab.handover: on a reload, the old workers learn when their replacements are ready.

The files are written by the master and read by workers; here one process
plays both. Under gunicorn, with load, see tests/testing/test_rollout.py."""

import os
import time

import pytest

from mab import handover


@pytest.fixture(autouse=True)
def directory():
    path = handover.prepare()
    yield path
    handover.cleanup()
    assert not os.path.exists(path)


def test_a_term_outside_a_reload_drains_at_once():
    # The server stopping, or a worker recycled by max_requests.
    assert not handover.replacements_pending(1)


def test_old_workers_wait_until_every_replacement_is_ready():
    handover.begin_reload(last_age=2, workers=2, wait_seconds=60)
    assert handover.replacements_pending(1) and handover.replacements_pending(2)
    handover.announce_ready(3)
    assert handover.replacements_pending(1)
    handover.announce_ready(4)
    assert not handover.replacements_pending(1) and not handover.replacements_pending(2)


def test_a_new_worker_is_not_named_by_the_reload():
    handover.begin_reload(last_age=2, workers=2, wait_seconds=60)
    # Worker 3, say recycled by max_requests before worker 4 is ready.
    assert not handover.replacements_pending(3)


def test_workers_ready_before_the_reload_do_not_count():
    for age in (1, 2):
        handover.announce_ready(age)
    handover.begin_reload(last_age=2, workers=2, wait_seconds=60)
    assert handover.replacements_pending(1)
    assert sorted(os.listdir(handover._directory)) == ["reload.json"]


def test_the_wait_is_bounded(monkeypatch):
    handover.begin_reload(last_age=2, workers=2, wait_seconds=30)
    assert handover.replacements_pending(1)
    later = time.time() + 31
    monkeypatch.setattr(handover.time, "time", lambda: later)
    assert not handover.replacements_pending(1)


def test_a_second_reload_names_every_worker_up_to_it():
    handover.begin_reload(last_age=2, workers=2, wait_seconds=60)
    handover.announce_ready(3)
    handover.announce_ready(4)
    handover.begin_reload(last_age=4, workers=2, wait_seconds=60)
    for age in (1, 2, 3, 4):
        assert handover.replacements_pending(age)
    handover.announce_ready(5)
    handover.announce_ready(6)
    assert not handover.replacements_pending(3)


def test_without_the_master_hooks_nothing_waits():
    handover.cleanup()
    handover.begin_reload(last_age=2, workers=2, wait_seconds=60)
    handover.announce_ready(3)
    assert not handover.replacements_pending(1)
