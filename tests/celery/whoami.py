"""Connects to one URL as the app's library for a role does and prints who answered:
whoami.py ROLE URL -> {"laddr": ..., "db": ..., "user": ...} (CLIENT INFO), as JSON.

cache: redis.Redis.from_url (redis-py); broker: kombu.Connection's channel (Celery's
broker); result_backend: Celery(backend=URL).backend. Nothing is written.
"""

import json
import sys

role, url = sys.argv[1], sys.argv[2]
if role == "cache":
    import redis

    client = redis.Redis.from_url(url)
elif role == "broker":
    from kombu import Connection

    conn = Connection(url)
    client = conn.default_channel.client
elif role == "result_backend":
    from celery import Celery

    client = Celery(backend=url).backend.client
else:
    sys.exit(f"unknown role {role}")
info = client.client_info()
print(json.dumps({"laddr": info["laddr"], "db": int(info["db"]), "user": info["user"]}))
