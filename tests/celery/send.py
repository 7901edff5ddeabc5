"""Sends tasks with the real Celery client: send.py '<JSON list of operations>'.

Each operation is one of:
- {"task": "add", "args": [2, 3], "queue": "celery", "priority": 5, "countdown": 5}: send a
  task (queue, priority and countdown optional); its id is printed, one per line;
- {"declare": ["q1", "q2"]}: declare queues (each bound to an exchange of its own name, as
  Celery's automatic queues are), with kombu;
- {"flushall": true}: FLUSHALL on the producer's own connection, which goes on publishing
  afterwards without declaring again (what a long-lived web process does).
All run on one connection, in order.
"""

import json
import sys

from kombu import Exchange, Queue

from tasks import app

with app.connection_for_write() as conn:
    with app.producer_or_acquire() as producer:
        for op in json.loads(sys.argv[1]):
            if op.get("declare"):
                channel = producer.channel
                for name in op["declare"]:
                    Queue(name, Exchange(name), routing_key=name)(channel).declare()
                continue
            if op.get("flushall"):
                producer.channel.client.flushall()
                continue
            options = {}
            if op.get("queue"):
                options["queue"] = op["queue"]
            if op.get("priority") is not None:
                options["priority"] = op["priority"]
            if op.get("countdown") is not None:
                options["countdown"] = op["countdown"]
            result = app.send_task(
                "tasks." + op["task"], args=op.get("args", []), producer=producer, **options
            )
            print(result.id)
