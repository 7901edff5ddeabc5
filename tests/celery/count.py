"""Prints what Celery itself counts in each queue: count.py queue1 queue2 ...

The size kombu's Redis transport gives (`queue_declare(passive=True).message_count`: LLEN
summed over the app's own priority steps), as JSON {"queue": count}.
"""

import json
import sys

from tasks import app

with app.connection_for_write() as conn:
    channel = conn.default_channel
    counts = {q: channel.queue_declare(q, passive=True).message_count for q in sys.argv[1:]}
print(json.dumps(counts))
