"""Prints what python-dotenv's load_dotenv() reads from each file given (its DotEnv with
override=False: variables already in the environment win, also in ${VAR}):
dotenv_values.py FILE... -> a JSON list, one {key: value or null} object per file."""

import json
import logging
import sys

from dotenv.main import DotEnv

logging.disable(logging.CRITICAL)
print(json.dumps([DotEnv(path, override=False, interpolate=True).dict() for path in sys.argv[1:]]))
