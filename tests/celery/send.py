"""Sends tasks with the real Celery client: send.py '<JSON list of sends>'.

Each send is {"task": "add", "args": [2, 3], "queue": "celery", "priority": 5}; queue and
priority are optional. Prints the task ids, one per line.
"""

import json
import sys

from tasks import app

with app.connection_for_write() as conn:
    with app.producer_or_acquire() as producer:
        for send in json.loads(sys.argv[1]):
            options = {}
            if send.get("queue"):
                options["queue"] = send["queue"]
            if send.get("priority") is not None:
                options["priority"] = send["priority"]
            result = app.send_task(
                "tasks." + send["task"], args=send.get("args", []), producer=producer, **options
            )
            print(result.id)
