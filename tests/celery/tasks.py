"""The Celery app the sidecar's tests run real workers and clients of.

Configured from the environment by the Rust tests (tests/support/mod.rs):
BROKER_URL, and kombu's transport options KEYPREFIX (global_keyprefix), SEP, STEPS
(priority_steps), QUEUE_ORDER (queue_order_strategy), VISIBILITY (visibility_timeout), plus
PREFETCH (worker_prefetch_multiplier), RESULT_BACKEND, RESULT_EXPIRES and ACKS_LATE. Set as Celery's Redis broker documentation shows them.
For beat: BEAT_EVERY (seconds between runs of tasks.tick in beat_schedule), BEAT_MAX_LOOP
(beat_max_loop_interval; RedBeat's lock lasts five of them) and REDBEAT_PREFIX
(redbeat_key_prefix), as RedBeat's documentation shows them. For Sentinel: MASTER_NAME
(master_name) and SENTINEL_PASSWORD (sentinel_kwargs' password).
"""

import os
import time

from celery import Celery

app = Celery("tasks", broker=os.environ["BROKER_URL"])

options = {}
if os.environ.get("KEYPREFIX"):
    options["global_keyprefix"] = os.environ["KEYPREFIX"]
if os.environ.get("SEP"):
    options["sep"] = os.environ["SEP"]
if os.environ.get("STEPS"):
    options["priority_steps"] = [int(s) for s in os.environ["STEPS"].split(",")]
if os.environ.get("QUEUE_ORDER"):
    options["queue_order_strategy"] = os.environ["QUEUE_ORDER"]
if os.environ.get("VISIBILITY"):
    options["visibility_timeout"] = float(os.environ["VISIBILITY"])
# Sentinel (a sentinel:// BROKER_URL), as Celery's documentation shows it: the master's
# name, and the sentinels' own password in sentinel_kwargs.
if os.environ.get("MASTER_NAME"):
    options["master_name"] = os.environ["MASTER_NAME"]
if os.environ.get("SENTINEL_PASSWORD"):
    options["sentinel_kwargs"] = {"password": os.environ["SENTINEL_PASSWORD"]}
app.conf.broker_transport_options = options
# Clients publish task-sent, which is the only event that names the queue.
app.conf.task_send_sent_event = True
app.conf.worker_prefetch_multiplier = int(os.environ.get("PREFETCH", "4"))
app.conf.broker_connection_retry_on_startup = True
# The result backend, when a test sets one, and RESULT_EXPIRES=none for results kept forever
# (result_expires=None).
if os.environ.get("RESULT_BACKEND"):
    app.conf.result_backend = os.environ["RESULT_BACKEND"]
if os.environ.get("RESULT_EXPIRES") == "none":
    app.conf.result_expires = None
# ACKS_LATE=1: acknowledge after the task ran (task_acks_late), as Celery's docs show it.
if os.environ.get("ACKS_LATE"):
    app.conf.task_acks_late = True
# Beat: one periodic task; with -S redbeat.RedBeatScheduler its schedule is kept on the
# broker (redbeat_redis_url defaults to broker_url).
if os.environ.get("BEAT_EVERY"):
    app.conf.beat_schedule = {
        "tick-every": {"task": "tasks.tick", "schedule": float(os.environ["BEAT_EVERY"])}
    }
if os.environ.get("BEAT_MAX_LOOP"):
    app.conf.beat_max_loop_interval = float(os.environ["BEAT_MAX_LOOP"])
if os.environ.get("REDBEAT_PREFIX"):
    app.conf.redbeat_key_prefix = os.environ["REDBEAT_PREFIX"]


@app.task
def tick():
    return "tock"


@app.task
def add(x, y):
    return x + y


@app.task
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task
def boom():
    raise ValueError("boom!")


@app.task(bind=True, max_retries=1)
def retry_once(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok"
