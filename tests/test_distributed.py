"""kwta/distributed.py: the process group's collectives wait long enough for what runs on one process alone."""

from datetime import timedelta

from kwta import distributed


def test_collectives_outwait_the_binarization_test_run_on_the_main_process(monkeypatch):
    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kwargs: joined.update(kwargs))
    distributed.init("cpu")
    assert joined["timeout"] == distributed.COLLECTIVE_TIMEOUT >= timedelta(hours=12)  # torch's own: 10 or 30 min
