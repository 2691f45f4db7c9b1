"""The job store's rules without a server: the bounded queue, leases and retries, fencing of a
worker that lost its job, restart recovery, cancel and delete; and the autoscaling policy."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from deepsound_rt.serving.autoscale import BACKLOG, backlog_policy
from deepsound_rt.serving.store import DataDirInUse, JobStore, QueueFull, new_job_id


def queue(store: JobStore, count: int = 1, queue_size: int = 10) -> list[str]:
    ids = []
    for _ in range(count):
        job_id = new_job_id()
        store.job_dir(job_id).mkdir()
        store.insert(job_id, "clip.mp4", "input.mp4", {"seed": 1}, queue_size)
        ids.append(job_id)
    return ids


def statuses(store: JobStore, job_id: str) -> list[dict]:
    rows, _ = store.events_since(job_id, 0)
    return [json.loads(data) for _, kind, data in rows if kind == "status"]


@pytest.fixture
def store(tmp_path):
    store = JobStore(tmp_path, exclusive=False)
    yield store
    store.close()


def test_the_queue_is_bounded_even_under_concurrent_submits(store):
    errors = []

    def submit():
        try:
            queue(store, queue_size=3)
        except QueueFull as error:
            errors.append(error)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.counts() == {"queued": 3} and len(errors) == 5


def test_jobs_are_claimed_oldest_first_one_worker_each(store):
    first, second = queue(store, 2)
    assert store.claim("a", lease_s=30).id == first
    assert store.claim("b", lease_s=30).id == second
    assert store.claim("c", lease_s=30) is None
    assert store.get(first).worker == "a" and store.get(first).attempts == 1


def test_an_expired_lease_hands_the_job_to_another_worker_and_fences_the_first(store):
    (job_id,) = queue(store)
    store.claim("dead", lease_s=0.05)
    store.add_step(job_id, "dead", {"step": "plan", "decision": "x", "seconds": 0.1})
    assert store.claim("alive", lease_s=30) is None  # the lease still holds
    time.sleep(0.1)
    job = store.claim("alive", lease_s=30)
    assert job.id == job_id and job.attempts == 2 and job.worker == "alive" and job.steps == []
    assert statuses(store, job_id)[-1] == {"status": "running", "attempt": 2, "worker": "alive", "retry_of": "dead"}
    assert store.check(job_id, "dead") == "lost" and store.check(job_id, "alive") == "ok"
    assert not store.finish(job_id, "dead", "done", has_audio=True)  # the old attempt changes nothing
    store.add_step(job_id, "dead", {"step": "plan", "decision": "stale", "seconds": 1})
    assert store.get(job_id).steps == [] and store.get(job_id).status == "running"
    assert store.finish(job_id, "alive", "done", has_audio=True)
    assert store.get(job_id).status == "done"


def test_renewed_leases_keep_a_job_with_its_worker(store):
    (job_id,) = queue(store)
    store.claim("busy", lease_s=0.2)
    for _ in range(4):
        time.sleep(0.1)
        store.renew(["busy"], lease_s=0.2)
    assert store.claim("other", lease_s=30) is None


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(tmp_path):
    store = JobStore(tmp_path, exclusive=False, max_attempts=2)
    (job_id,) = queue(store)
    store.claim("first", lease_s=-1)
    store.claim("second", lease_s=-1)
    assert store.claim("third", lease_s=30) is None
    job = store.get(job_id)
    assert job.status == "failed" and "2 attempts" in job.error
    store.close()


def test_a_single_box_requeues_what_was_running_and_drops_half_submitted_folders(tmp_path):
    crashed = JobStore(tmp_path, exclusive=True)
    running, waiting, cancelling = queue(crashed, 3)
    crashed.claim("old", lease_s=3600)
    crashed.claim("old-2", lease_s=3600)
    crashed.claim("old-3", lease_s=3600)
    crashed.requeue(waiting, "old-2", "the server stopped")  # a graceful stop puts its job back
    crashed.cancel(cancelling)  # asked for while it ran: it must not run again
    orphan = crashed.job_dir(new_job_id())
    orphan.mkdir()  # a submit that died before its insert
    crashed.close()

    restarted = JobStore(tmp_path, exclusive=True)
    assert restarted.requeue_orphans() == 2
    assert restarted.get(running).status == "queued"
    assert statuses(restarted, running)[-1] == {"status": "queued", "reason": "the server restarted"}
    assert statuses(restarted, waiting)[-1] == {"status": "queued", "reason": "the server stopped"}
    assert restarted.get(cancelling).status == "cancelled"
    assert not orphan.exists() and restarted.job_dir(running).exists()
    assert restarted.claim("new", lease_s=30).attempts == 2  # a crash counts as an attempt
    assert restarted.claim("new-2", lease_s=30).attempts == 1  # an orderly stop does not
    restarted.close()


def test_a_single_box_and_replicas_never_share_a_data_dir(tmp_path):
    single = JobStore(tmp_path, exclusive=True)
    with pytest.raises(DataDirInUse):
        JobStore(tmp_path, exclusive=False)
    single.close()
    replica, other_replica = JobStore(tmp_path, exclusive=False), JobStore(tmp_path, exclusive=False)
    with pytest.raises(DataDirInUse):
        JobStore(tmp_path, exclusive=True)
    replica.close()
    other_replica.close()


def test_cancel_and_delete(store):
    running, waiting = queue(store, 2)
    store.claim("w", lease_s=30)  # takes the oldest
    assert store.cancel(waiting) == "cancelled"  # still queued: cancelled at once
    assert store.cancel(running) == "running" and store.check(running, "w") == "cancel"
    store.finish(running, "w", "cancelled", "cancelled by request")
    store.delete(running)
    assert store.get(running) is None and not store.job_dir(running).exists()
    assert store.events_since(running, 0) == ([], None)
    assert store.cancel(new_job_id()) is None


def test_ids_never_become_other_paths(store):
    for bad in ("../x", "0" * 31 + "/", "A" * 32, "0" * 33):
        with pytest.raises(ValueError):
            store.job_dir(bad)


def test_the_autoscaling_policy_follows_the_backlog():
    def context(reports):
        return SimpleNamespace(aggregated_metrics=reports, target_num_replicas=2)

    assert backlog_policy(context({BACKLOG: {"r1": 5.0, "r2": 4.0}})) == (5.0, {})
    assert backlog_policy(context({BACKLOG: {"r1": 0.0}})) == (0.0, {})
    assert backlog_policy(context({})) == (2, {})  # no report yet: stay
    assert backlog_policy(context(None)) == (2, {})
