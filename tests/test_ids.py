"""Request ids are ULIDs: 26 Crockford base32 characters, time first, unique, survive fork."""
from __future__ import annotations

import os
import re
import time

from fastgate.ids import new_request_id, request_id_time_ms

ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}\Z")


def test_shape_time_and_uniqueness():
    before = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    assert all(ULID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert all(before <= request_id_time_ms(i) <= after for i in ids)


def test_child_after_fork_does_not_repeat_parent_ids():
    new_request_id()  # fill the parent's random pool
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    parent = new_request_id()
    assert child[10:] != parent[10:]
